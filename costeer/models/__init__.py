"""Loading models for either role (bundled GGUF, hub id, local folder), the shared model options of the
CLI and the app, and the CPU matmul choice made at load time."""
