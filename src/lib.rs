//! darts-rs: a from-scratch deep-learning engine (tensors, a tape-based autograd, layers and
//! optimizers on a CPU reference backend) and DARTS, Differentiable Architecture Search
//! (Liu, Simonyan & Yang, ICLR 2019), written directly against it.

pub mod autograd;
pub mod darts;
pub mod data;
pub mod device;
pub mod error;
pub mod gradcheck;
pub mod io;
pub mod malloc;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod profile;
pub mod rng;
pub mod tensor;
pub mod train;
pub mod viz;

pub use autograd::{Tape, Var};
pub use device::Device;
pub use error::{Error, Result};
pub use rng::Rng;
pub use tensor::Tensor;
