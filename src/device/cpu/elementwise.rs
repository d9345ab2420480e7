//! Elementwise kernels and activations: forward and the derivative rules used by backward.

use rayon::prelude::*;

use super::{CHUNK, map, zip};

/// `max(x, 0)` elementwise, NaN kept ([`relu_scalar`]).
pub fn relu(x: &[f32]) -> Vec<f32> {
    map(x, relu_scalar)
}

/// `max(x, 0)`, except that NaN stays NaN, as in PyTorch (`f32::max` would give 0, and so hide a
/// diverged network from its loss).
pub fn relu_scalar(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() { x } else { 0.0 }
}

/// `dy · [x > 0]`.
pub fn relu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    zip(x, dy, |x, g| if x > 0.0 { g } else { 0.0 })
}

/// `tanh(x)`.
pub fn tanh(x: &[f32]) -> Vec<f32> {
    map(x, f32::tanh)
}

/// `dy · (1 − y²)` where `y = tanh(x)`.
pub fn tanh_backward(y: &[f32], dy: &[f32]) -> Vec<f32> {
    zip(y, dy, |y, g| g * (1.0 - y * y))
}

/// `1 / (1 + e^(−x))`, written to avoid overflow for large |x|.
pub fn sigmoid(x: &[f32]) -> Vec<f32> {
    map(x, sigmoid_scalar)
}

/// The logistic function of one value.
pub fn sigmoid_scalar(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `dy · y · (1 − y)` where `y = sigmoid(x)`.
pub fn sigmoid_backward(y: &[f32], dy: &[f32]) -> Vec<f32> {
    zip(y, dy, |y, g| g * y * (1.0 - y))
}

/// `a + b`.
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    zip(a, b, |a, b| a + b)
}

/// `a − b`.
pub fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    zip(a, b, |a, b| a - b)
}

/// `a ⊙ b`.
pub fn mul(a: &[f32], b: &[f32]) -> Vec<f32> {
    zip(a, b, |a, b| a * b)
}

/// `s · x`.
pub fn scale(x: &[f32], s: f32) -> Vec<f32> {
    map(x, |v| v * s)
}

/// `a·x + b·z`, each product rounded before the sum (the GPU kernel computes the same bits).
pub fn lincomb(a: f32, x: &[f32], b: f32, z: &[f32]) -> Vec<f32> {
    zip(x, z, |x, z| a * x + b * z)
}

/// `xs[0] + xs[1] + …` elementwise (at least one term, equal lengths), added in that order: the
/// bits of adding them two at a time, in one pass over the output instead of one per term.
pub fn sum(xs: &[&[f32]]) -> Vec<f32> {
    let mut out = vec![0.0; xs[0].len()];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let at = chunk * CHUNK;
            out.copy_from_slice(&xs[0][at..at + out.len()]);
            for x in &xs[1..] {
                out.iter_mut().zip(&x[at..]).for_each(|(o, &v)| *o += v);
            }
        });
    out
}

/// `Σₖ wₖ · xₖ`, summed in `k` order (the DARTS mixed op): `x₀ · w₀`, then `+ wₖ · xₖ` for each
/// further `k`, each product rounded before its sum (the GPU kernel computes the same bits), in
/// one pass over the output instead of one per term.
pub fn weighted_sum(xs: &[&[f32]], weights: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; xs[0].len()];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let at = chunk * CHUNK;
            (out.iter_mut().zip(&xs[0][at..])).for_each(|(o, &v)| *o = v * weights[0]);
            for (x, &w) in xs.iter().zip(weights).skip(1) {
                out.iter_mut().zip(&x[at..]).for_each(|(o, &v)| *o += w * v);
            }
        });
    out
}
