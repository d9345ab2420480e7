//! Optimizers, learning-rate schedules and gradient clipping (PyTorch semantics).

pub mod adam;
pub mod asgd;
pub mod clip;
pub mod optimizer;
pub mod schedule;
pub mod sgd;
