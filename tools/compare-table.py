"""The darts-rs vs PyTorch table of tools/compare.sh and tools/gpu-check.sh.

Pairs each darts-NAME.json in DIR with pytorch-NAME.json (the `--json` reports of
`darts bench search-cnn` and tools/reference/bench.py, which share their keys) and prints one
markdown row per NAME: the order, batch, GEMM precision and threads, both medians, their ratio,
both peak memories (on the device for --device cuda, else on the host) and both times of one
eval-mode forward of the validation batch. A side that is missing or failed shows n/a.

Usage: python3 tools/compare-table.py DIR [--device cpu|cuda]
"""

import argparse
import json
import os


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", help="the folder of darts-*.json and pytorch-*.json reports")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()
    memory = "peak_device_bytes" if args.device == "cuda" else "peak_host_bytes"

    names = set()
    for file in os.listdir(args.dir):
        for prefix in ("darts-", "pytorch-"):
            if file.startswith(prefix) and file.endswith(".json"):
                names.add(file[len(prefix):-len(".json")])
    rows = []
    for name in names:
        ours = load(os.path.join(args.dir, f"darts-{name}.json"))
        theirs = load(os.path.join(args.dir, f"pytorch-{name}.json"))
        either = ours or theirs
        rows.append(((either["unrolled"], either["batch_size"], either.get("tf32", False), name),
                     ours, theirs))
    rows.sort(key=lambda row: row[0])

    def ms(r):
        return f"{r['median_ms']:.1f}" if r else "n/a"

    def mib(r):
        b = r and r.get(memory)
        return f"{b / 2**20:.0f}" if b else "n/a"

    def eval_ms(r):
        t = r and r.get("eval_forward_ms")
        return f"{t:.1f}" if t else "n/a"

    print(f"device: {args.device}; memory columns: {memory}")
    print("| order | batch | GEMMs | threads | darts-rs ms/step | PyTorch ms/step "
          "| darts-rs / PyTorch | darts-rs peak MiB | PyTorch peak MiB "
          "| darts-rs eval ms | PyTorch eval ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (unrolled, batch, tf32, _), ours, theirs in rows:
        ratio = f"{ours['median_ms'] / theirs['median_ms']:.2f}" if ours and theirs else "n/a"
        threads = (ours or theirs).get("threads", "n/a")
        print(f"| {'second' if unrolled else 'first'} | {batch} | {'TF32' if tf32 else 'float'} "
              f"| {threads} | {ms(ours)} | {ms(theirs)} | {ratio} | {mib(ours)} | {mib(theirs)} "
              f"| {eval_ms(ours)} | {eval_ms(theirs)} |")
    print(f"\nJSON results in {args.dir}")


if __name__ == "__main__":
    main()
