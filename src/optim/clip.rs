//! Gradient clipping by global norm, as PyTorch's `clip_grad_norm_`.

use crate::device::cpu::dot_f64;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Clips gradients by their global L2 norm: `total = √(Σ g²)` over every element of every tensor
/// (accumulated in f64 in a fixed order); when `max_norm / (total + 1e−6) < 1`, every gradient is
/// scaled by that factor, so the clipped norm is just under `max_norm`. Returns the gradients
/// (unchanged ones share storage with the inputs) and the norm before clipping.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f32) -> Result<(Vec<Tensor>, f32)> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::invalid(
            "clip_grad_norm",
            format!("max_norm must be finite and positive, got {max_norm}"),
        ));
    }
    let squares: f64 = grads.iter().map(|g| dot_f64(g.data(), g.data())).sum();
    let total = squares.sqrt() as f32;
    let coef = max_norm / (total + 1e-6);
    let clipped = if coef < 1.0 {
        grads.iter().map(|g| g.map(|v| v * coef)).collect()
    } else {
        grads.to_vec()
    };
    Ok((clipped, total))
}
