"""The steering core: the paper's policy (SteeringParams, FTRL, its closed form C), the steering
processors, and the device-side defences on the delta."""
