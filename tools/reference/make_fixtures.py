"""Writes the PyTorch reference fixtures that tests/reference_fixtures.rs checks darts-rs against.

For each tiny configuration, one safetensors file (all float32) holds a starting state and what
PyTorch computes from it:

  init.<name>                      weights and BN buffers (state_dict names, no num_batches_tracked)
  alpha.normal, alpha.reduce       the architecture parameters
  momentum.<name>                  SGD momentum buffer of every weight (non-zero: the start state
                                   comes from one first-order search iteration)
  adam.step, adam.exp_avg.<i>, adam.exp_avg_sq.<i>
                                   the architect's Adam state (i = 0 normal, 1 reduce; the step
                                   count as darts-rs stores it: [count >> 24, count & 0xFFFFFF])
  train.images, train.labels       the training batch (labels as float32)
  val.images, val.labels           the validation batch
  forward.logits, forward.loss     train-mode forward of the training batch
  grad.<name>, grad.alpha.normal, grad.alpha.reduce
                                   gradients of that loss
  first_order.alpha_grad.{normal,reduce}   grad_alpha L_val(w, alpha)
  second_order.alpha_grad.{normal,reduce}  the unrolled gradient with xi = lr
  {first,second}_order.after.<name>, .after.alpha.{normal,reduce}
                                   weights, BN buffers and alphas after one full search iteration
  {first,second}_order.train_loss, .val_loss

Metadata: "config" (the SearchConfig as JSON), "hyper" (hyperparameters as JSON), "image_size",
"batch_size", "seed", "kink_margin", "torch" (the version that wrote it), "description".

Kinks. ReLU and max pooling are not differentiable everywhere: if a ReLU input lies within
rounding distance of 0 (or two candidates of a max-pool window within rounding distance of each
other), two correct f32 implementations may take different sides, and their gradients then differ
for real (the finite-difference Hessian-vector product amplifies such a flip a hundredfold). So
every compared pass is watched, and a seed whose smallest ReLU input |x| or smallest non-zero
max-pool top-2 gap falls below MARGIN is skipped for the next seed (exact ties are kept: they come
from pixels that a ReLU zeroed on every channel, are broken the same way by both implementations,
namely first maximum in window order, and no gradient flows through them).

Usage: tools/reference/.venv/bin/python tools/reference/make_fixtures.py [--out DIR] [--seed N]
(DIR defaults to tests/fixtures; the test reads another folder from $DARTS_REFERENCE_FIXTURES).
"""

import argparse
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import darts_ref as ref  # noqa: E402

# The fixture configurations: (file stem, SearchConfig, image size, batch size, hyperparameters).
CONFIGS = [
    (
        "search_rgb",
        ref.SearchConfig(in_channels=3, init_channels=4, num_classes=10, layers=3, steps=4,
                         multiplier=4, stem_multiplier=3),
        8,
        4,
        ref.Hyper(lr=0.025),
    ),
    (
        "search_gray",
        ref.SearchConfig(in_channels=1, init_channels=2, num_classes=5, layers=4, steps=3,
                         multiplier=2, stem_multiplier=2),
        12,
        3,
        ref.Hyper(lr=0.1),
    ),
]

# The smallest distance from a kink that a fixture's passes may come (see the module docstring).
MARGIN = 2e-6


def save_safetensors(path, tensors, metadata):
    """Writes float32 tensors in the safetensors format with a sorted header, so the same values
    always give the same bytes (the safetensors package orders the metadata arbitrarily)."""
    header = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors):
        data = tensors[name].numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in chunks:
            f.write(chunk)


class KinkWatch:
    """Forward hooks that record how close the ReLU inputs and max-pool windows come to a kink."""

    def __init__(self):
        self.closest = float("inf")
        self.where = None

    def note(self, distance, where):
        if distance < self.closest:
            self.closest, self.where = distance, where

    def install(self, model):
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.ReLU):
                module.register_forward_hook(self._relu_hook(name))
            elif isinstance(module, torch.nn.MaxPool2d):
                module.register_forward_hook(self._pool_hook(name, module))

    def _relu_hook(self, name):
        def hook(_module, inputs, _output):
            self.note(inputs[0].detach().abs().min().item(), f"ReLU {name}")
        return hook

    def _pool_hook(self, name, module):
        def hook(_module, inputs, _output):
            x = inputs[0].detach()
            n, c, h, w = x.shape
            padded = F.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), value=float("-inf"))
            windows = F.unfold(padded, module.kernel_size, stride=module.stride)
            top = windows.topk(2, dim=1).values
            gaps = top[:, 0] - top[:, 1]
            gaps = gaps[gaps > 0]
            if gaps.numel():
                self.note(gaps.min().item(), f"max pool {name}")
        return hook

def random_batch(config, image_size, batch_size, generator):
    images = torch.randn((batch_size, config.in_channels, image_size, image_size),
                         generator=generator)
    labels = torch.randint(0, config.num_classes, (batch_size,), generator=generator)
    return images, labels


class State:
    """Everything a search step reads and changes, rebuilt from plain tensors so that each
    computation starts from exactly the state the fixture records."""

    def __init__(self, config, hyper, watch, named, alphas, momentum, adam_state):
        self.model = ref.Network(config)
        watch.install(self.model)  # copies of the model (the unrolled one) keep the hooks
        missing, unexpected = self.model.load_state_dict(named, strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
        self.alphas = [a.detach().clone().requires_grad_() for a in alphas]
        self.sgd, self.adam = ref.make_optimizers(self.model, self.alphas, hyper)
        for name, p in self.model.named_parameters():
            self.sgd.state[p]["momentum_buffer"] = momentum[name].clone()
        for i, a in enumerate(self.alphas):
            self.adam.state[a] = {
                "step": torch.tensor(float(adam_state["step"])),
                "exp_avg": adam_state["exp_avg"][i].clone(),
                "exp_avg_sq": adam_state["exp_avg_sq"][i].clone(),
            }


def snapshot(model, alphas, sgd, adam):
    named = {k: v.detach().clone() for k, v in ref.named_state(model).items()}
    momentum = {name: sgd.state[p]["momentum_buffer"].clone()
                for name, p in model.named_parameters()}
    states = [adam.state[a] for a in alphas]
    adam_state = {
        "step": int(states[0]["step"]),
        "exp_avg": [s["exp_avg"].clone() for s in states],
        "exp_avg_sq": [s["exp_avg_sq"].clone() for s in states],
    }
    return named, [a.detach().clone() for a in alphas], momentum, adam_state


def make_fixture(config, image_size, batch_size, hyper, seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ref.Network(config)
    with torch.no_grad():
        # Give the stem's affine BN non-trivial parameters, so that its gradients are tested.
        model.stem[1].weight.uniform_(0.5, 1.5, generator=generator)
        model.stem[1].bias.normal_(0.0, 0.1, generator=generator)
    # Alphas far from uniform, so that every softmax weight is exercised.
    alphas = ref.init_alphas(config, scale=0.5, generator=generator)
    sgd, adam = ref.make_optimizers(model, alphas, hyper)
    # One first-order search iteration on other batches: non-zero momentum buffers, Adam state,
    # BN running statistics that are not the defaults.
    pre_train = random_batch(config, image_size, batch_size, generator)
    pre_val = random_batch(config, image_size, batch_size, generator)
    ref.search_step(model, alphas, pre_train, pre_val, sgd, adam, hyper, unrolled=False)
    start = snapshot(model, alphas, sgd, adam)
    watch = KinkWatch()
    named, alphas0, momentum, adam_state = start

    train = random_batch(config, image_size, batch_size, generator)
    val = random_batch(config, image_size, batch_size, generator)

    out = {}
    for name, t in named.items():
        out[f"init.{name}"] = t
    for name, t in momentum.items():
        out[f"momentum.{name}"] = t
    out["alpha.normal"], out["alpha.reduce"] = alphas0
    out["adam.step"] = torch.tensor([float(adam_state["step"] >> 24),
                                     float(adam_state["step"] & 0xFFFFFF)])
    for i in range(2):
        out[f"adam.exp_avg.{i}"] = adam_state["exp_avg"][i]
        out[f"adam.exp_avg_sq.{i}"] = adam_state["exp_avg_sq"][i]
    for split, (images, labels) in (("train", train), ("val", val)):
        out[f"{split}.images"] = images
        out[f"{split}.labels"] = labels.to(torch.float32)

    # A train-mode forward and backward of the training batch.
    s = State(config, hyper, watch, *start)
    s.model.train()
    logits = s.model(train[0], s.alphas)
    loss = torch.nn.functional.cross_entropy(logits, train[1])
    names = [n for n, _ in s.model.named_parameters()]
    grads = torch.autograd.grad(loss, list(s.model.parameters()) + s.alphas)
    out["forward.logits"] = logits.detach()
    out["forward.loss"] = loss.detach().reshape(1)
    for name, g in zip(names, grads):
        out[f"grad.{name}"] = g
    out["grad.alpha.normal"], out["grad.alpha.reduce"] = grads[len(names):]

    # The architect's gradients.
    s = State(config, hyper, watch, *start)
    _, g = ref.first_order_alpha_grad(s.model, s.alphas, val)
    out["first_order.alpha_grad.normal"], out["first_order.alpha_grad.reduce"] = g
    s = State(config, hyper, watch, *start)
    _, g = ref.second_order_alpha_grad(s.model, s.alphas, train, val, hyper.lr, s.sgd, hyper)
    out["second_order.alpha_grad.normal"], out["second_order.alpha_grad.reduce"] = g

    # One full search iteration of each order.
    for order, unrolled in (("first_order", False), ("second_order", True)):
        s = State(config, hyper, watch, *start)
        train_loss, val_loss = ref.search_step(s.model, s.alphas, train, val, s.sgd, s.adam,
                                               hyper, unrolled)
        for name, t in ref.named_state(s.model).items():
            out[f"{order}.after.{name}"] = t
        out[f"{order}.after.alpha.normal"], out[f"{order}.after.alpha.reduce"] = s.alphas
        out[f"{order}.train_loss"] = torch.tensor([train_loss])
        out[f"{order}.val_loss"] = torch.tensor([val_loss])

    out = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}
    metadata = {
        "config": json.dumps(config.as_dict()),
        "hyper": json.dumps(hyper.as_dict()),
        "image_size": str(image_size),
        "batch_size": str(batch_size),
        "seed": str(seed),
        "kink_margin": str(MARGIN),
        "torch": torch.__version__,
        "description": "DARTS CNN search: PyTorch reference values (tools/reference)",
    }
    return out, metadata, watch


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "..", "tests", "fixtures")))
    parser.add_argument("--seed", type=int, default=2, help="first seed to try")
    parser.add_argument("--tries", type=int, default=20, help="seeds to try (see 'Kinks')")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    for stem, config, image_size, batch_size, hyper in CONFIGS:
        for seed in range(args.seed, args.seed + args.tries):
            tensors, metadata, watch = make_fixture(config, image_size, batch_size, hyper, seed)
            if watch.closest >= MARGIN:
                break
            print(f"{stem}: seed {seed} skipped: {watch.where} comes within {watch.closest:.2e} "
                  "of its kink")
        else:
            raise SystemExit(f"{stem}: no seed in {args.tries} tries keeps off the kinks")
        path = os.path.join(args.out, f"{stem}.safetensors")
        save_safetensors(path, tensors, metadata)
        print(f"{path}: seed {seed}, closest to a kink {watch.closest:.2e} ({watch.where}), "
              f"{len(tensors)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
