//! Training loops and what they need around the model: one optimizer step over a parameter store,
//! and the small demonstration network trained by `darts demo` and the engine's end-to-end test.

pub mod bench;
pub mod demo;
pub mod metrics;
pub mod progress;
pub mod search;

use crate::Result;
use crate::nn::{Gradients, ParamId, ParamStore};
use crate::optim::clip::clip_grad_norm;
use crate::optim::optimizer::Optimizer;

/// One optimizer step on the parameters `ids` of `store` with `grads` (zeros where a parameter
/// got none). With `max_norm`, the gradients are first clipped to that global L2 norm (PyTorch's
/// `clip_grad_norm_`). Returns the gradient norm before clipping, or 0 without clipping.
pub fn optimizer_step(
    store: &mut ParamStore,
    optimizer: &mut dyn Optimizer,
    ids: &[ParamId],
    grads: &Gradients,
    max_norm: Option<f32>,
) -> Result<f32> {
    let mut grads = grads.aligned(store, ids)?;
    let mut norm = 0.0;
    if let Some(max_norm) = max_norm {
        (grads, norm) = clip_grad_norm(&grads, max_norm)?;
    }
    store.update_values(ids, |params| optimizer.step(params, &grads))?;
    Ok(norm)
}
