//! Layers with PyTorch's default initialisations, the named parameter store, and the forward-pass
//! context that binds the two to the tape.

pub mod batchnorm;
pub mod conv;
pub mod ctx;
pub mod embedding;
pub mod linear;
pub mod params;

pub use batchnorm::BatchNorm2d;
pub use conv::Conv2d;
pub use ctx::{Ctx, Gradients};
pub use embedding::Embedding;
pub use linear::Linear;
pub use params::{ParamId, ParamStore, join_name};

use crate::Result;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// PyTorch's default for conv and linear weights and biases: `kaiming_uniform_(a = √5)`, which
/// works out to U(−1/√fan_in, 1/√fan_in).
pub fn uniform_fan_in(shape: &[usize], fan_in: usize, rng: &mut Rng) -> Result<Tensor> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    Tensor::uniform(shape, -bound, bound, rng)
}
