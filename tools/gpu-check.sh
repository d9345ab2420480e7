#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (an H200 with driver 580 is the target). It
# comes in two halves, because a GPU machine may have no Rust toolchain and no network:
#
#   tools/gpu-check.sh build        on a machine with Rust (no GPU needed): builds, for sm_90, the
#                                   kernel tests, the op-level device test, the PyTorch fixture
#                                   test, the darts binary and the criterion benches, and copies
#                                   them, stripped, with ptxas's register/spill report and the
#                                   commit, into gpu-check-bin/ (ignored by git, ~30 MiB).
#   tools/gpu-check.sh run [OUT]    on the GPU machine, in the repository root with gpu-check-bin/
#                                   beside it: runs every kernel test (each compares the kernels
#                                   with the CPU reference on the emulator and on the GPU), the op
#                                   and fixture tests on CUDA, the kernels' CUDA cases under
#                                   compute-sanitizer (memcheck, racecheck) where it is installed,
#                                   times the search step (first and second order, paper shapes,
#                                   float and TF32 GEMMs) and the same steps in PyTorch with cuDNN
#                                   (tools/reference/bench.py, with GPU_CHECK_PYTHON or python3,
#                                   where it has torch), runs the CUDA criterion benches, and ends
#                                   with a short table. Logs and the table (summary.md) go to OUT,
#                                   default gpu-check/. Each step has a time limit, and the whole
#                                   run GPU_CHECK_SECONDS (default 420): a step the budget has no
#                                   room for is skipped with a row saying so, and the table is
#                                   always printed.
#
# `tools/gpu-check.sh` with no argument does both, for a GPU machine that can build.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=gpu-check-bin

# `name path` of every executable a cargo --message-format=json build produced.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable"):
        print(message["target"]["name"], message["executable"])'
}

build() {
  set -e
  tools/install-cuda-toolchain.sh
  # A target folder of its own: the main build keeps its PTX target (compute_80).
  export DARTS_CUDA_ARCH=sm_90 CARGO_TARGET_DIR=target/gpu-check
  rm -rf "$bin"
  mkdir -p "$bin"
  local tests=(device_ops reference_fixtures)
  for file in tests/kernels_*.rs; do tests+=("$(basename "$file" .rs)"); done
  local args=()
  for test in "${tests[@]}"; do args+=(--test "$test"); done
  {
    cargo test --release --no-run "${args[@]}" --message-format=json
    cargo build --release --bin darts --message-format=json
    cargo bench --bench ops --no-run --message-format=json
  } | executables | while read -r name path; do
    cp "$path" "$bin/$name"
    strip "$bin/$name"
  done
  tools/kernel-report.sh "$CARGO_TARGET_DIR" >"$bin/ptxas.txt" 2>&1 && echo none >"$bin/spills" ||
    echo "SOME, see $bin/ptxas.txt" >"$bin/spills"
  git describe --always --dirty --abbrev=7 >"$bin/COMMIT"
  set +e
  echo "built $(ls "$bin" | wc -l) files, $(du -sm "$bin" | cut -f1) MiB, into $bin/ (commit $(cat "$bin/COMMIT"))"
}

# `capped N`: N seconds, or fewer if fewer are left before the run's budget ends (keeping 15 s
# for the summary); 0 when none are left.
capped() {
  local left=$((budget_end - $(date +%s) - 15))
  if [ "$left" -lt "$1" ]; then echo $((left > 0 ? left : 0)); else echo "$1"; fi
}

# Runs test binary `name` with `args`, under `limit` seconds (capped), into OUT/name.log; one
# table row.
test_row() {
  local name="$1" limit
  limit="$(capped "$2")"
  shift 2
  if [ "$limit" -eq 0 ]; then
    rows+=("| $name | not run (time budget spent) | | |")
    return
  fi
  local log="$out/$name.log"
  timeout "$limit" "$bin/$name" "$@" --test-threads 1 --nocapture >"$log" 2>&1
  local status=$?
  local result
  result="$(grep -E '^test result' "$log" | tail -n 1)"
  local skipped
  skipped="$(grep -ci 'skipped' "$log")"
  local verdict=FAIL
  [ $status -eq 0 ] && verdict=pass
  [ $status -eq 124 ] && verdict="TIMEOUT ($limit s)"
  rows+=("| $name | $verdict | ${result#test result: } | $skipped |")
}

# compute-sanitizer over the CUDA cases of the kernel suites, within 150 seconds in all (capped):
# memcheck (out-of-bounds and misaligned accesses, which the emulator cannot see all of) and
# racecheck (shared-memory races on the real hardware). One table row per tool and binary.
sanitizer_rows() {
  local sanitizer
  sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)"
  if [ -z "$sanitizer" ]; then
    rows+=("| compute-sanitizer | not found | | |")
    return
  fi
  local deadline=$(($(date +%s) + $(capped 150)))
  local tool test
  for tool in memcheck racecheck; do
    for test in "$bin"/kernels_*; do
      local name="$tool $(basename "$test")"
      local left=$((deadline - $(date +%s)))
      if [ $left -le 0 ]; then
        rows+=("| $name | not run (time spent) | | |")
        continue
      fi
      local log="$out/$tool-$(basename "$test").log"
      timeout "$left" "$sanitizer" --tool "$tool" --error-exitcode 1 \
        "$test" cuda_matches_the_cpu_reference --test-threads 1 --nocapture >"$log" 2>&1
      local status=$?
      local summary
      summary="$(grep -E '(ERROR|RACECHECK) SUMMARY' "$log" | tail -n 1 | sed 's/^=* *//')"
      local verdict="did not run (see $log)"
      [ -n "$summary" ] && verdict=FAIL
      [ -n "$summary" ] && [ $status -eq 0 ] && verdict=pass
      [ $status -eq 124 ] && verdict="TIMEOUT"
      rows+=("| $name | $verdict | $summary | $(grep -ci 'skipped' "$log") |")
    done
  done
}

run_checks() {
  out="${1:-gpu-check}"
  if [ ! -f "$bin/COMMIT" ]; then
    echo "no $bin/: run 'tools/gpu-check.sh build' on a machine with Rust first, and bring $bin/ here" >&2
    exit 2
  fi
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"  # absolute: the PyTorch benches run in tools/reference
  # darts bench reports the commit it was built from; its checkout is not on this machine.
  export DARTS_COMMIT
  DARTS_COMMIT="$(cat "$bin/COMMIT")"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" ||
    echo "nvidia-smi failed: no GPU visible; the CUDA test cases will say they skipped" | tee "$out/gpu.txt"

  local started
  started=$(date +%s)
  budget_end=$((started + ${GPU_CHECK_SECONDS:-420}))
  rows=()
  for test in "$bin"/kernels_*; do
    test_row "$(basename "$test")" 60
  done
  test_row device_ops 120
  # The fixtures' CUDA half only: the CPU and emulator halves run in CI.
  export DARTS_REFERENCE_FIXTURES=tests/fixtures
  test_row reference_fixtures 120 cuda

  # The search step at the paper's shapes, first and second order, float and TF32 GEMMs; each
  # case then in PyTorch (cuDNN) on the same GPU, where a Python with torch is found.
  local python="${GPU_CHECK_PYTHON:-python3}" have_torch=1
  "$python" -c 'import torch; assert torch.cuda.is_available()' >"$out/pytorch.txt" 2>&1 ||
    have_torch=0
  local benches=() launches=()
  for name in first-b64 second-b64 first-b64-tf32 second-b64-tf32; do
    local flags=() limit
    [[ $name == second-* ]] && flags+=(--unrolled)
    [[ $name == *-tf32 ]] && flags+=(--tf32)
    limit="$(capped 120)"
    if [ "$limit" -eq 0 ]; then
      benches+=("| $name: not run (time budget spent) |")
      continue
    fi
    timeout "$limit" "$bin/darts" bench search-cnn --device cuda "${flags[@]}" --warmup 2 \
      --steps 10 --json "$out/darts-$name.json" >"$out/darts-$name.txt" 2>&1
    benches+=("$(tail -n 1 "$out/darts-$name.txt")")
    launches+=("$name: $(grep -o 'per step: .*' "$out/darts-$name.txt")")
    limit="$(capped 90)"
    [ "$have_torch" = 1 ] && [ "$limit" -gt 0 ] && (cd tools/reference &&
      timeout "$limit" "$python" bench.py "${flags[@]}" --device cuda --warmup 2 --steps 10 \
        --json "$out/pytorch-$name.json") >"$out/pytorch-$name.txt" 2>&1
  done
  sanitizer_rows
  local limit
  limit="$(capped 90)"
  [ "$limit" -gt 0 ] && timeout "$limit" "$bin/darts" bench search-cnn --device cuda --steps 3 \
    --profile >"$out/bench-cuda-profile.txt" 2>&1
  limit="$(capped 180)"
  [ "$limit" -gt 0 ] && timeout "$limit" "$bin/ops" --bench cuda >"$out/criterion-cuda.txt" 2>&1

  {
    echo "# GPU check, $(date -u +%F), commit $DARTS_COMMIT, $(cat "$out/gpu.txt")"
    echo
    echo "| test binary | status | result | lines saying skipped |"
    echo "| --- | --- | --- | --- |"
    printf '%s\n' "${rows[@]}"
    echo
    echo "ptxas spills: $(cat "$bin/spills")"
    echo
    echo "| bench | order | batch | median ms | min ms | max ms | images/s | peak host MiB | device MiB | device | commit |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${benches[@]}"
    echo
    printf '%s\n' "${launches[@]}"
    echo
    echo "darts-rs vs PyTorch on this GPU (same shapes, steps and precision; $out/pytorch*.txt):"
    if [ "$have_torch" = 1 ]; then
      "$python" tools/compare-table.py "$out" --device cuda
    else
      echo "not run: $python has no PyTorch that sees a GPU ($(tail -n 1 "$out/pytorch.txt"))"
    fi
    echo
    echo "criterion (CUDA, median of each): see $out/criterion-cuda.txt"
    grep -B1 'time:' "$out/criterion-cuda.txt" 2>/dev/null | grep -v '^--$' | head -n 120
    echo
    echo "total: $(($(date +%s) - started)) s"
  } | tee "$out/summary.md"
}

case "${1:-all}" in
  build) build ;;
  run) run_checks "${2:-}" ;;
  all) build && run_checks "${2:-}" ;;
  *)
    echo "usage: tools/gpu-check.sh [build | run [OUT_DIR]]" >&2
    exit 2
    ;;
esac
