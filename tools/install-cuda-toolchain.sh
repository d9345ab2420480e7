#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler toolchain (nvcc, ptxas, cicc/NVVM, the CUDA headers and
# CCCL) from PyPI into .cuda-toolchain/ at the repository root, where build.rs looks for it.
# No GPU and no system CUDA are needed: this is only the compiler that turns kernels/*.cu into PTX.
#
# Idempotent: when the pinned toolchain is already there it only prints where nvcc is.
# Usage: tools/install-cuda-toolchain.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# All five packages move together: nvcc 13.0 emits PTX ISA 9.0, the newest that driver 580
# (CUDA 13.0) can JIT. A newer nvcc would emit PTX that driver cannot load.
PACKAGES=(
  "nvidia-cuda-nvcc==13.0.*"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-crt==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
)
ROOT=.cuda-toolchain
TARGET="$ROOT/pkgs"
NVCC="$TARGET/nvidia/cu13/bin/nvcc"
STAMP="$ROOT/installed.txt"

if [[ -x "$NVCC" && -f "$STAMP" && "$(cat "$STAMP")" == "${PACKAGES[*]}" ]]; then
  echo "CUDA toolchain already installed: nvcc at $PWD/$NVCC"
  exit 0
fi

rm -rf "$ROOT"
mkdir -p "$ROOT"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-cache-dir \
  --target "$TARGET" "${PACKAGES[@]}"
"$NVCC" --version | tail -n 2
echo "${PACKAGES[*]}" >"$STAMP"
# build.rs cannot watch a folder that did not exist when it last ran; touching it makes the next
# cargo build run it again and pick nvcc up.
if [[ -f build.rs ]]; then touch build.rs; fi
echo "CUDA toolchain installed: nvcc at $PWD/$NVCC"
