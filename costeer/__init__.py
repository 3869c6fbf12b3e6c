"""CoSteer: decoding-time personalization of a cloud LLM by a local model's delta (arXiv 2507.04756)."""
from .policy import SteeringParams, closed_form_steer, effective_strength, ftrl_steer

__all__ = ["SteeringParams", "ftrl_steer", "closed_form_steer", "effective_strength"]
