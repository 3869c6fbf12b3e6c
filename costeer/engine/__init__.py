"""The engine: how to decode (spec), the token loop and its schedules (decoding, speculative), the
cloud and device sides and where their rows live, and the fold of a reply's events."""
