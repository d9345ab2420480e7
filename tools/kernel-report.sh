#!/usr/bin/env bash
# Prints what ptxas said about every kernel of the last build that had nvcc: registers, shared
# memory, stack and spills per kernel (build.rs writes OUT_DIR/<family>.ptxas.txt). Spills
# (registers that did not fit and went to local memory) are flagged, and make the exit status 1.
#
# Usage: tools/kernel-report.sh [TARGET_DIR]     (default: target)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-target}"

# The newest report of any profile; reports of one build share a folder.
newest="$(find "$target" -path '*/build/darts-*/out/*.ptxas.txt' -printf '%T@ %p\n' 2>/dev/null |
  sort -n | tail -n 1 | cut -d' ' -f2- || true)"
if [[ -z "$newest" ]]; then
  echo "no ptxas report under $target/: build with nvcc first (tools/install-cuda-toolchain.sh)" >&2
  exit 2
fi
dir="$(dirname "$newest")"
echo "ptxas reports in $dir"

spills=0
for report in "$dir"/*.ptxas.txt; do
  family="$(basename "$report" .ptxas.txt)"
  echo
  echo "== $family"
  # One row per kernel, from the "Compiling entry function", "spill" and "Used" lines.
  if ! awk '
    /Compiling entry function/ { match($0, /\047[^\047]+\047/); name = substr($0, RSTART + 1, RLENGTH - 2);
                                 match($0, /for \047[^\047]+\047/); arch = substr($0, RSTART + 5, RLENGTH - 6) }
    /bytes stack frame/ { stack = $1; stores = $5; loads = $9 }
    /Used [0-9]+ registers/ {
      match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
      smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
      flag = (stores + loads > 0) ? "  <-- SPILLS" : ""
      if (flag != "") spilled = 1
      printf "%-52s %-6s %4s regs %6s B smem %5s B stack %5s/%-5s B spill st/ld%s\n", name, arch, regs, smem, stack, stores, loads, flag
    }
    END { exit spilled ? 1 : 0 }
  ' "$report"; then
    spills=1
  fi
done
if [[ $spills -ne 0 ]]; then
  echo
  echo "some kernels spill registers to local memory (marked above)"
  exit 1
fi
