//! Gradient clipping by global norm, as PyTorch's `clip_grad_norm_`.

use crate::tensor::Tensor;
use crate::{Error, Result};

/// Clips gradients by their global L2 norm: `total = √(Σ g²)` over every element of every tensor
/// (accumulated in f64 in a fixed order, on the gradients' device; one scalar comes back to
/// the host); when `max_norm / (total + 1e−6) < 1`, every gradient is
/// scaled by that factor, so the clipped norm is just under `max_norm`. Returns the gradients
/// (unchanged ones share storage with the inputs) and the norm before clipping.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f32) -> Result<(Vec<Tensor>, f32)> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::invalid(
            "clip_grad_norm",
            format!("max_norm must be finite and positive, got {max_norm}"),
        ));
    }
    let total = Tensor::global_norm(grads)?;
    let coef = max_norm / (total + 1e-6);
    let clipped = if coef < 1.0 {
        Tensor::scaled_all(grads, coef)?
    } else {
        grads.to_vec()
    };
    Ok((clipped, total))
}
