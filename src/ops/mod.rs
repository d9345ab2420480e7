//! Ops: each family checks its arguments, runs the device kernel, and records on the tape how to
//! send the gradient back. The derivative rules sit beside the forward they belong to.

pub mod batchnorm;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod matmul;
pub mod mixed;
pub mod pool;
pub mod reduce;
pub mod rnn;
pub mod shape;
pub mod softmax;

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::device::gpu::{DeviceBuffer, Executor, GpuError};
use crate::tensor::{Data, Tensor};
use crate::{Error, Result};

/// A GPU op's result: a new device buffer.
pub type GpuResult = std::result::Result<DeviceBuffer<f32>, GpuError>;

/// The device every one of `tensors` lives on; an error naming `op` when they differ.
pub fn common_device(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let device = tensors.first().map_or(Device::Cpu, |t| t.device());
    match tensors.iter().find(|t| t.device() != device) {
        None => Ok(device),
        Some(other) => Err(Error::invalid(
            op,
            format!(
                "inputs on {device} and {} cannot be combined: move them to one device",
                other.device()
            ),
        )),
    }
}

/// The device buffer behind a tensor that [`common_device`] placed on a GPU.
pub fn buffer(t: &Tensor) -> &DeviceBuffer<f32> {
    match t.storage() {
        Data::Gpu(_, b) => b,
        Data::Cpu(_) => unreachable!("called only for tensors on a GPU device"),
    }
}

/// `f(x)` elementwise on `x`'s device, as a tensor of `x`'s shape.
pub fn unary(
    x: &Tensor,
    cpu: impl FnOnce(&[f32]) -> Vec<f32>,
    gpu: impl FnOnce(&dyn Executor, &DeviceBuffer<f32>) -> GpuResult,
) -> Result<Tensor> {
    unary_to(x, x.shape(), cpu, gpu)
}

/// `f(x)` on `x`'s device, as a tensor of `shape` (pooling, reductions).
pub fn unary_to(
    x: &Tensor,
    shape: &[usize],
    cpu: impl FnOnce(&[f32]) -> Vec<f32>,
    gpu: impl FnOnce(&dyn Executor, &DeviceBuffer<f32>) -> GpuResult,
) -> Result<Tensor> {
    match x.storage() {
        Data::Cpu(v) => Tensor::from_vec(cpu(v), shape),
        Data::Gpu(exec, b) => Tensor::from_buffer(gpu(exec, b)?, shape, x.device()),
    }
}

/// `f(a, b)` elementwise on the inputs' common device, as a tensor of `a`'s shape.
pub fn binary(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    cpu: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    gpu: impl FnOnce(&dyn Executor, &DeviceBuffer<f32>, &DeviceBuffer<f32>) -> GpuResult,
) -> Result<Tensor> {
    let device = common_device(op, &[a, b])?;
    match (a.storage(), b.storage()) {
        (Data::Cpu(x), Data::Cpu(y)) => Tensor::from_vec(cpu(x, y), a.shape()),
        (Data::Gpu(exec, x), Data::Gpu(_, y)) => {
            Tensor::from_buffer(gpu(exec, x, y)?, a.shape(), device)
        }
        _ => unreachable!("common_device compared the devices"),
    }
}

/// Checks that two variables have equal shapes; `op` names the caller for the error.
pub fn same_shape(tape: &Tape, op: &'static str, a: Var, b: Var) -> Result<()> {
    if tape.shape(a) != tape.shape(b) {
        return Err(Error::shape(
            op,
            format!("{:?} (the first operand's shape)", tape.shape(a)),
            tape.shape(b),
        ));
    }
    Ok(())
}

/// Checks that a variable is 4-D (NCHW) and returns its dimensions.
pub fn nchw(tape: &Tape, op: &'static str, x: Var) -> Result<[usize; 4]> {
    match *tape.shape(x) {
        [n, c, h, w] => Ok([n, c, h, w]),
        ref other => Err(Error::shape(op, "4 dimensions (N, C, H, W)", other)),
    }
}
