"""Benchmarks: `python -m costeer bench` (speed in process, over HTTP, against llama.cpp) and
`bench --remote` (the modes at simulated round-trip times through a delaying TCP proxy)."""
