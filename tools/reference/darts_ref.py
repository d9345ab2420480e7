"""A PyTorch reference of the DARTS CNN search (the supernet, the first- and second-order architect
and one full search iteration), written from the facts in the project's DARTS specification
(sections 1-4), to measure darts-rs against.

The module tree mirrors the original's, so `state_dict()` keys are exactly the names darts-rs
gives its parameters (`cells.0._ops.13._ops.4.op.6.weight`, `stem.1.running_mean`, ...). Every
tensor is float32. Modern PyTorch: BatchNorm weights start at 1 (the original's 0.3.1 drew them
from U(0, 1)); conv and linear initialisation is the same in both.
"""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

PRIMITIVES = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]


class SearchConfig:
    """The shape of a search network; the defaults are the original CIFAR-10 search."""

    FIELDS = ("in_channels", "init_channels", "num_classes", "layers", "steps", "multiplier",
              "stem_multiplier")

    def __init__(self, in_channels=3, init_channels=16, num_classes=10, layers=8, steps=4,
                 multiplier=4, stem_multiplier=3):
        self.in_channels = in_channels
        self.init_channels = init_channels
        self.num_classes = num_classes
        self.layers = layers
        self.steps = steps
        self.multiplier = multiplier
        self.stem_multiplier = stem_multiplier

    def as_dict(self):
        return {f: getattr(self, f) for f in self.FIELDS}

    def num_edges(self):
        return sum(i + 2 for i in range(self.steps))

    def is_reduction(self, i):
        return i in (self.layers // 3, 2 * self.layers // 3)


# ----------------------------------------------------------------------------------------------
# Candidate operations. Index positions inside nn.Sequential give the parameter names, so the
# ReLUs stay in the sequences even though they hold no parameters.


class ReLUConvBN(nn.Module):
    """ReLU, k x k conv without bias, BN: `op.1` is the conv, `op.2` the BN."""

    def __init__(self, c_in, c_out, kernel, stride, padding, affine):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


def _dw_pw_bn(c_in, c_out, kernel, stride, padding, dilation, affine):
    """ReLU, depthwise conv, pointwise 1x1 conv, BN (four Sequential slots)."""
    return [
        nn.ReLU(inplace=False),
        nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation,
                  groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out, affine=affine),
    ]


class DilConv(nn.Module):
    """One ReLU-depthwise(dilated)-pointwise-BN block."""

    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine):
        super().__init__()
        self.op = nn.Sequential(*_dw_pw_bn(c_in, c_out, kernel, stride, padding, dilation, affine))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two ReLU-depthwise-pointwise-BN blocks; only the first depthwise conv is strided."""

    def __init__(self, c_in, c_out, kernel, stride, padding, affine):
        super().__init__()
        self.op = nn.Sequential(
            *_dw_pw_bn(c_in, c_in, kernel, stride, padding, 1, affine),
            *_dw_pw_bn(c_in, c_out, kernel, 1, padding, 1, affine),
        )

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """Zeros of the (subsampled, when strided) input's shape."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """ReLU, then two stride-2 1x1 convs (the second on the input shifted by one pixel),
    concatenated along channels, then BN."""

    def __init__(self, c_in, c_out, affine):
        super().__init__()
        assert c_out % 2 == 0
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        assert x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
        x = self.relu(x)
        joined = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(joined)


def make_candidate(primitive, c, stride):
    """One primitive as it sits in a search-network MixedOp (every BN non-affine; the pools are
    followed by a non-affine BN)."""
    affine = False
    if primitive == "none":
        return Zero(stride)
    if primitive == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride=stride, padding=1),
                             nn.BatchNorm2d(c, affine=False))
    if primitive == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
                             nn.BatchNorm2d(c, affine=False))
    if primitive == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if primitive == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1, affine)
    if primitive == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2, affine)
    if primitive == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2, affine)
    if primitive == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2, affine)
    raise ValueError(f"unknown primitive {primitive}")


# ----------------------------------------------------------------------------------------------
# The supernet.


class MixedOp(nn.Module):
    """All primitives on one edge, summed with the edge's softmax weights."""

    def __init__(self, c, stride):
        super().__init__()
        self._ops = nn.ModuleList(make_candidate(p, c, stride) for p in PRIMITIVES)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(self, steps, multiplier, c_pp, c_p, c, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_pp, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_pp, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self.steps = steps
        self.multiplier = multiplier
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(MixedOp(c, stride))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            node = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)


class Network(nn.Module):
    """The search supernet. The two alpha matrices are NOT module parameters (as in the
    original): they are passed to `forward`."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config.init_channels
        c_stem = config.stem_multiplier * c
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, c_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_stem),  # affine, as in the original code
        )
        c_pp, c_p, c_curr = c_stem, c_stem, c
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(config.layers):
            reduction = config.is_reduction(i)
            if reduction:
                c_curr *= 2
            self.cells.append(Cell(config.steps, config.multiplier, c_pp, c_p, c_curr, reduction,
                                   reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, config.multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, config.num_classes)

    def forward(self, x, alphas):
        alpha_normal, alpha_reduce = alphas
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            weights = F.softmax(alpha_reduce if cell.reduction else alpha_normal, dim=-1)
            s0, s1 = s1, cell(s0, s1, weights)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))


def named_state(model):
    """The state_dict without BN's `num_batches_tracked` counters (darts-rs keeps none)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def init_alphas(config, scale=1e-3, generator=None):
    """[alpha_normal, alpha_reduce], each [edges, 8] ~ scale * N(0, 1), requiring grad."""
    shape = (config.num_edges(), len(PRIMITIVES))
    return [(scale * torch.randn(shape, generator=generator)).requires_grad_() for _ in range(2)]


# ----------------------------------------------------------------------------------------------
# The architect and one search iteration.


class Hyper:
    """Search hyperparameters; the defaults are the original's."""

    def __init__(self, lr=0.025, momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
                 arch_learning_rate=3e-4, arch_weight_decay=1e-3, arch_betas=(0.5, 0.999),
                 hvp_radius=0.01):
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.arch_learning_rate = arch_learning_rate
        self.arch_weight_decay = arch_weight_decay
        self.arch_betas = tuple(arch_betas)
        self.hvp_radius = hvp_radius

    def as_dict(self):
        return dict(vars(self), arch_betas=list(self.arch_betas))


def train_loss(model, alphas, batch):
    """Training-mode forward (batch-statistic BN, running statistics updated) and mean
    cross-entropy."""
    images, labels = batch
    model.train()
    return F.cross_entropy(model(images, alphas), labels)


def first_order_alpha_grad(model, alphas, val):
    """g = grad_alpha L_val(w, alpha)."""
    loss = train_loss(model, alphas, val)
    return loss, list(torch.autograd.grad(loss, alphas))


def second_order_alpha_grad(model, alphas, train, val, xi, sgd, hyper):
    """The unrolled gradient of spec section 4.2:
    1. w' = w - xi * (mu * b + grad_w L_train(w) + lambda * w), b = SGD's momentum buffer (zeros
       before the first step), on a copy of the model (BN buffers copied after the pass of 1.);
    2. d_alpha, v = grad_{alpha, w'} L_val(w', alpha) on the copy;
    3. eps = r / ||v||; g+- = grad_alpha L_train(w +- eps v, alpha) on the model itself (each pass
       updates its BN running statistics); w is restored exactly afterwards;
    4. g = d_alpha - xi * (g+ - g-) / (2 eps)."""
    params = list(model.parameters())
    loss = train_loss(model, alphas, train)
    grads = torch.autograd.grad(loss, params)
    unrolled = copy.deepcopy(model)
    with torch.no_grad():
        for p, g, q in zip(params, grads, unrolled.parameters()):
            state = sgd.state.get(p, {})
            buf = state.get("momentum_buffer")
            step = g if buf is None else hyper.momentum * buf + g
            q.copy_(p - xi * (step + hyper.weight_decay * p))
    val_loss = train_loss(unrolled, alphas, val)
    unrolled_params = list(unrolled.parameters())
    both = torch.autograd.grad(val_loss, list(alphas) + unrolled_params)
    d_alpha, v = both[: len(alphas)], both[len(alphas):]
    norm = torch.cat([t.reshape(-1) for t in v]).norm()
    eps = hyper.hvp_radius / norm.item()
    saved = [p.detach().clone() for p in params]

    def alpha_grad_at(sign):
        with torch.no_grad():
            for p, w, t in zip(params, saved, v):
                p.copy_(w + (sign * eps) * t)
        return torch.autograd.grad(train_loss(model, alphas, train), alphas)

    plus = alpha_grad_at(1.0)
    minus = alpha_grad_at(-1.0)
    with torch.no_grad():
        for p, w in zip(params, saved):
            p.copy_(w)
    grad = [d - xi * (gp - gm) / (2 * eps) for d, gp, gm in zip(d_alpha, plus, minus)]
    return val_loss, grad


def make_optimizers(model, alphas, hyper):
    sgd = torch.optim.SGD(model.parameters(), lr=hyper.lr, momentum=hyper.momentum,
                          weight_decay=hyper.weight_decay)
    adam = torch.optim.Adam(alphas, lr=hyper.arch_learning_rate, betas=hyper.arch_betas,
                            weight_decay=hyper.arch_weight_decay)
    return sgd, adam


def search_step(model, alphas, train, val, sgd, adam, hyper, unrolled):
    """One iteration of the search loop: the architect's Adam step on alpha, then a training-batch
    forward/backward of the weights, gradient clipping to global norm `grad_clip`, and the SGD
    step. The weight learning rate xi is `sgd`'s current lr. Returns (train loss, val loss)."""
    xi = sgd.param_groups[0]["lr"]
    if unrolled:
        val_loss, grad = second_order_alpha_grad(model, alphas, train, val, xi, sgd, hyper)
    else:
        val_loss, grad = first_order_alpha_grad(model, alphas, val)
    adam.zero_grad()
    for a, g in zip(alphas, grad):
        a.grad = g.detach().clone()
    adam.step()
    sgd.zero_grad()
    detached = [a.detach() for a in alphas]
    loss = train_loss(model, detached, train)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), hyper.grad_clip)
    sgd.step()
    return loss.item(), val_loss.item()

