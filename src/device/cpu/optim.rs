//! Optimizer updates on host slices: the CPU reference of `kernels/optim.cu`, one parameter tensor
//! at a time, with PyTorch's arithmetic (see `crate::optim` for the optimizers that hold the
//! state). The GPU kernels compute the same expressions in the same order.

use crate::device::gpu::optim::{AdamParams, AsgdParams, SgdParams};

/// One SGD step: `d = g + wd·w`; with momentum `b = μ·b + d` (`b = d` when `first`) and `d = b`;
/// then `w ← w − lr·d`. `b` is required when `μ ≠ 0` and ignored otherwise.
pub fn sgd_step(p: &SgdParams, w: &mut [f32], g: &[f32], b: Option<&mut [f32]>, first: bool) {
    let (lr, mu, wd) = (p.lr, p.momentum, p.weight_decay);
    let mut b = b.filter(|_| mu != 0.0);
    for (i, (w, &g)) in w.iter_mut().zip(g).enumerate() {
        let mut d = g;
        if wd != 0.0 {
            d += wd * *w;
        }
        if let Some(b) = b.as_deref_mut() {
            b[i] = if first { d } else { mu * b[i] + d };
            d = b[i];
        }
        *w += -lr * d;
    }
}

/// Adam step number `step` (from 1): `g ← g + wd·w`, `m ← β₁·m + (1−β₁)·g`,
/// `v ← β₂·v + (1−β₂)·g²`, `w ← w − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`, the bias corrections
/// computed in f64 as PyTorch computes them in Python floats.
pub fn adam_step(
    p: &AdamParams,
    step: u64,
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let (b1, b2) = p.betas;
    let (wd, eps) = (p.weight_decay, p.eps);
    let t = step as f64;
    let bias1 = 1.0 - (b1 as f64).powf(t);
    let bias2 = 1.0 - (b2 as f64).powf(t);
    let step_size = (p.lr as f64 / bias1) as f32;
    let bias2_sqrt = bias2.sqrt() as f32;
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let mut g = g;
        if wd != 0.0 {
            g += wd * *w;
        }
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        *w += -step_size * (*m / (v.sqrt() / bias2_sqrt + eps));
    }
}

/// One ASGD step: `g ← g + wd·w`, `w ← w·(1 − λη) − η·g` (the factor rounded from f64), then
/// `ax ← w` when `μ = 1`, else `ax ← ax + μ·(w − ax)`.
pub fn asgd_step(p: &AsgdParams, w: &mut [f32], g: &[f32], ax: &mut [f32]) {
    let decay = (1.0 - p.lambd as f64 * p.eta as f64) as f32;
    for ((w, &g), ax) in w.iter_mut().zip(g).zip(ax.iter_mut()) {
        let mut g = g;
        if p.weight_decay != 0.0 {
            g += p.weight_decay * *w;
        }
        *w *= decay;
        *w += -p.eta * g;
        *ax = if p.mu == 1.0 {
            *w
        } else {
            *ax + (*w - *ax) * p.mu
        };
    }
}
