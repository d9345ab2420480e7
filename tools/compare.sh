#!/usr/bin/env bash
# darts-rs against PyTorch, on the CPU or (--device cuda) on a GPU against PyTorch with cuDNN: full
# DARTS CNN search steps (first and second order) at the paper's network shape, timed by
# `darts bench search-cnn` and by tools/reference/bench.py, then one table: our ms/step, PyTorch's
# ms/step, their ratio, the peak memory of both (device memory on a GPU, host memory else), and
# both times of one eval-mode forward of the validation batch.
#
# The defaults (batches 16 and 64, 1 warm-up + 1 timed step per case) keep the whole comparison
# within about ten minutes on 2 cores; `--steps 3` shows the spread in about twice the time.
# PyTorch needs tools/reference/.venv (tools/reference/install.sh).
#
# Usage: tools/compare.sh [--batches "16 64"] [--orders "first second"] [--warmup 1] [--steps 1]
#          [--threads N] [--init-channels 16] [--layers 8] [--image-size 32] [--device cpu|cuda]
#          [--tf32] [--darts PATH] [--python PATH] [--out DIR]
# --tf32 (with --device cuda) lets both sides' convolutions and matrix products use TF32 tensor
# cores; without it both compute in float.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

batches="16 64"
orders="first second"
warmup=1
steps=1
threads="$(nproc)"
init_channels=16
layers=8
image_size=32
device=cpu
tf32=()
darts=""
python="$root/tools/reference/.venv/bin/python"
out=""

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --batches) batches="$2"; shift 2 ;;
        --orders) orders="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --init-channels) init_channels="$2"; shift 2 ;;
        --layers) layers="$2"; shift 2 ;;
        --image-size) image_size="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --tf32) tf32=(--tf32); shift ;;
        --darts) darts="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
case "$device" in
    cpu|cuda) ;;
    *) echo "compare.sh: --device takes 'cpu' or 'cuda', not '$device'" >&2; exit 2 ;;
esac
if [ ${#tf32[@]} -gt 0 ] && [ "$device" != cuda ]; then
    echo "compare.sh: --tf32 is for --device cuda (the CPUs compute in float)" >&2
    exit 2
fi
for order in $orders; do
    case "$order" in
        first|second) ;;
        *) echo "compare.sh: --orders takes 'first' and/or 'second', not '$order'" >&2; exit 2 ;;
    esac
done

if [ ! -x "$python" ]; then
    echo "compare.sh: no Python with PyTorch at $python; run tools/reference/install.sh" \
        "or pass --python" >&2
    exit 1
fi
if [ -z "$out" ]; then
    out="$(mktemp -d "${TMPDIR:-/tmp}/darts-compare.XXXXXX")"
fi
mkdir -p "$out"

# Our side: the release binary, built here unless --darts names one. If it cannot be built or has
# no `bench search-cnn` command, the table shows PyTorch alone.
have_darts=1
if [ -z "$darts" ]; then
    if (cd "$root" && cargo build --release --quiet --bin darts); then
        darts="$root/target/release/darts"
    else
        echo "compare.sh: could not build darts; comparing nothing on our side" >&2
        have_darts=0
    fi
fi
if [ "$have_darts" = 1 ] && ! "$darts" bench search-cnn --help >/dev/null 2>&1; then
    echo "compare.sh: $darts has no 'bench search-cnn' command yet; timing PyTorch alone" >&2
    have_darts=0
fi

shape=(--init-channels "$init_channels" --layers "$layers" --image-size "$image_size")
timing=(--warmup "$warmup" --steps "$steps")
for order in $orders; do
    flag=()
    [ "$order" = second ] && flag=(--unrolled)
    for batch in $batches; do
        name="$order-b$batch${tf32:+-tf32}"
        echo "== $order order, batch $batch" >&2
        if [ "$have_darts" = 1 ]; then
            RAYON_NUM_THREADS="$threads" "$darts" bench search-cnn --device "$device" "${flag[@]}" \
                "${tf32[@]}" \
                --batch-size "$batch" "${shape[@]}" "${timing[@]}" \
                --json "$out/darts-$name.json" >&2 \
                || echo "compare.sh: darts bench failed for $name" >&2
        fi
        (cd "$root/tools/reference" && "$python" bench.py "${flag[@]}" "${tf32[@]}" \
            --batch-size "$batch" \
            "${shape[@]}" "${timing[@]}" --threads "$threads" --device "$device" \
            --json "$out/pytorch-$name.json" >&2) \
            || echo "compare.sh: PyTorch bench failed for $name" >&2
    done
done

echo
"$python" "$root/tools/compare-table.py" "$out" --device "$device"
