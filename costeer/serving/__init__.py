"""`python -m costeer serve-cloud`: the cloud side as its own HTTP process (the OpenAI completions
subset vLLM serves), and the ASGI helpers that bound what a request can make it do."""
