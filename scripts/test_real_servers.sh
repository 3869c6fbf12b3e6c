#!/usr/bin/env bash
# The real-server suite: installs (or reuses the cached) vLLM and llama-server, then runs
# tests_real/ against them on loopback and prints what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/real_servers.sh all | grep -E '^(VLLM_PYTHON|LLAMA_SERVER)=')"
export VLLM_PYTHON LLAMA_SERVER
rm -f artifacts/real_servers.json
python -m pytest tests_real -p no:randomly
echo "real-server figures:"
cat artifacts/real_servers.json
