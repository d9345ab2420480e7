#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (an H200 with driver 580 is the target): builds
# the kernels for sm_90, runs every kernel test (each compares the kernels with the CPU reference
# on the emulator and on the device), prints ptxas's register/spill report, times the CPU search
# step for reference, and ends with a short table. Meant to finish within 10 minutes.
#
# Usage: tools/gpu-check.sh [OUT_DIR]   (logs and the table go to OUT_DIR, default gpu-check/)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"

tools/install-cuda-toolchain.sh
export DARTS_CUDA_ARCH=sm_90
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" ||
  echo "nvidia-smi failed: no GPU visible; the CUDA test cases will say they skipped" | tee "$out/gpu.txt"

started=$(date +%s)
cargo build --release --tests 2>&1 | tail -n 3
rows=()
for test in tests/kernels_*.rs; do
  name="$(basename "$test" .rs)"
  log="$out/$name.log"
  cargo test --release --test "$name" -- --nocapture --test-threads 1 >"$log" 2>&1
  status=$?
  result="$(grep -E '^test result' "$log" | tail -n 1)"
  skipped="$(grep -ci 'skipped' "$log")"
  rows+=("| $name | $([ $status -eq 0 ] && echo pass || echo FAIL) | ${result#test result: } | $skipped |")
done
tools/kernel-report.sh target >"$out/ptxas.txt" 2>&1
spills=$?
cargo run --release -q -- bench search-cnn --steps 3 --json "$out/bench-cpu.json" >"$out/bench-cpu.txt" 2>&1

{
  echo "# GPU check, $(date -u +%F), commit $(git rev-parse --short HEAD), $(cat "$out/gpu.txt")"
  echo
  echo "| kernel tests | status | result | lines saying skipped |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "ptxas spills: $([ $spills -eq 0 ] && echo none || echo "SOME, see $out/ptxas.txt")"
  echo
  tail -n 1 "$out/bench-cpu.txt"
  echo
  echo "total: $(( $(date +%s) - started )) s"
} | tee "$out/summary.md"
