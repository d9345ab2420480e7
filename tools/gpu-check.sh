#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (an H200 with driver 580 is the target): builds
# the kernels for sm_90, runs every kernel test (each compares the kernels with the CPU reference
# on the emulator and on the device) and the op-level device test, prints ptxas's register/spill
# report, times the search step on the GPU (first and second order, paper shapes, with float and
# with TF32 GEMMs) and the CUDA criterion benches, and ends with a short table. Meant to finish
# within 10 minutes.
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
for test in tests/kernels_*.rs tests/device_ops.rs; do
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
benches=()
for flags in "" "--unrolled" "--tf32" "--unrolled --tf32"; do
  name="bench-cuda$(echo "$flags" | tr -d ' ')"
  timeout 120 cargo run --release -q -- bench search-cnn --device cuda $flags --warmup 2 --steps 10 \
    --json "$out/$name.json" >"$out/$name.txt" 2>&1
  benches+=("$(tail -n 1 "$out/$name.txt")")
done
timeout 120 cargo run --release -q -- bench search-cnn --device cuda --steps 3 --profile \
  >"$out/bench-cuda-profile.txt" 2>&1
timeout 180 cargo bench --bench ops -- cuda >"$out/criterion-cuda.txt" 2>&1

{
  echo "# GPU check, $(date -u +%F), commit $(git rev-parse --short HEAD), $(cat "$out/gpu.txt")"
  echo
  echo "| kernel tests | status | result | lines saying skipped |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "ptxas spills: $([ $spills -eq 0 ] && echo none || echo "SOME, see $out/ptxas.txt")"
  echo
  echo "| bench | order | batch | median ms | min ms | max ms | images/s | peak host MiB | device MiB | device | commit |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${benches[@]}"
  echo
  echo "criterion (CUDA, median of each): see $out/criterion-cuda.txt"
  grep -B1 'time:' "$out/criterion-cuda.txt" | grep -v '^--$' | head -n 120
  echo
  echo "total: $(( $(date +%s) - started )) s"
} | tee "$out/summary.md"
