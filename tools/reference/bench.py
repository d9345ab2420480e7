"""Times full DARTS CNN search steps (architect step + weight step) in PyTorch, on the CPU or on a
CUDA GPU (with cuDNN, in its autotuned `benchmark` mode): the reference numbers for
`darts bench search-cnn`, with the same defaults (the paper's shapes:
batch 64, C 16, 8 cells, 32x32x3 images, 10 classes), the same step and the same JSON keys.

Each step is `darts_ref.search_step`: the first- or second-order (`--unrolled`) architect step on
a validation batch, then a forward/backward of the training batch, clipping to norm 5 and the SGD
step. As in `darts bench`, the two batches are random and fixed, the weight learning rate is
0.025, and the untimed warm-up steps come first.

Usage: tools/reference/.venv/bin/python tools/reference/bench.py [--unrolled] [--batch-size 64]
       [--init-channels 16] [--layers 8] [--image-size 32] [--in-channels 3] [--classes 10]
       [--warmup 1] [--steps 5] [--threads N] [--device cpu|cuda] [--tf32] [--json FILE]
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import darts_ref as ref  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unrolled", action="store_true", help="second-order architecture gradient")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default: all cores)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--tf32", action="store_true",
                   help="let cuDNN's convolutions and the matrix products use TF32 tensor cores "
                        "(PyTorch's default for convolutions; off here unless asked, as in darts)")
    p.add_argument("--json", help="also write the result as JSON to this file")
    args = p.parse_args()
    if args.steps < 1 or args.batch_size < 1 or args.threads < 1 or args.warmup < 0:
        p.error("--steps, --batch-size and --threads must be at least 1, --warmup at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: PyTorch sees no CUDA GPU here")
    return args


def set_tf32(on):
    """Lets cuDNN's convolutions and the matrix products round float inputs to TF32, or not, with
    the settings of PyTorch 2.9 and newer where they exist (the older ones are deprecated)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(torch.backends.cuda.matmul, "fp32_precision") and conv is not None:
        precision = "tf32" if on else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(2)
    device = torch.device(args.device)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    set_tf32(args.tf32)
    config = ref.SearchConfig(in_channels=args.in_channels, init_channels=args.init_channels,
                              num_classes=args.classes, layers=args.layers)
    hyper = ref.Hyper()
    model = ref.Network(config).to(device)
    alphas = [a.detach().to(device).requires_grad_() for a in ref.init_alphas(config)]
    sgd, adam = ref.make_optimizers(model, alphas, hyper)
    shape = (args.batch_size, args.in_channels, args.image_size, args.image_size)

    def batch():
        return (torch.randn(shape).to(device),
                torch.randint(0, args.classes, (args.batch_size,)).to(device))

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    train, val = batch(), batch()
    order = "second" if args.unrolled else "first"
    gemm = ", TF32" if args.tf32 and args.device == "cuda" else ""
    print(f"search-cnn ({order} order{gemm}): batch {args.batch_size}, C {args.init_channels}, "
          f"{args.layers} cells, {args.in_channels}x{args.image_size}x{args.image_size}; "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.threads} threads, "
          f"torch {torch.__version__}", file=sys.stderr)
    times = []
    eval_ms = None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            # One eval-mode forward of the validation batch, as the original's `infer` runs them
            # (and `darts bench` times one at the same point).
            model.eval()
            start = time.perf_counter()
            with torch.no_grad():
                model(val[0], alphas)
            sync()
            eval_ms = (time.perf_counter() - start) * 1e3
            model.train()
        start = time.perf_counter()
        ref.search_step(model, alphas, train, val, sgd, adam, hyper, args.unrolled)
        sync()
        ms = (time.perf_counter() - start) * 1e3
        if i >= args.warmup:
            print(f"  step {len(times)}: {ms:.1f} ms", file=sys.stderr)
            times.append(ms)
    print(f"  eval-mode forward of the validation batch: {eval_ms:.1f} ms", file=sys.stderr)
    median = statistics.median(times)
    # ru_maxrss is in KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = {
        "impl": "pytorch",
        "bench": "search-cnn",
        "unrolled": args.unrolled,
        "batch_size": args.batch_size,
        "init_channels": args.init_channels,
        "layers": args.layers,
        "image_size": args.image_size,
        "threads": args.threads,
        "tf32": args.tf32 and args.device == "cuda",
        "median_ms": median,
        "min_ms": min(times),
        "max_ms": max(times),
        "images_per_s": args.batch_size / (median / 1e3),
        "eval_forward_ms": eval_ms,
        "peak_host_bytes": peak,
        "peak_device_bytes": (torch.cuda.max_memory_reserved()
                              if args.device == "cuda" else None),
        "device": (torch.cuda.get_device_name() if args.device == "cuda" else "cpu"),
        "torch": torch.__version__,
    }
    print("| bench | order | batch | threads | median ms | min ms | max ms | images/s "
          "| peak host MiB | torch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| search-cnn | {order} | {args.batch_size} | {args.threads} | {median:.1f} "
          f"| {min(times):.1f} | {max(times):.1f} | {report['images_per_s']:.1f} "
          f"| {peak / 2**20:.0f} | {torch.__version__} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
