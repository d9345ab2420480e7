//! Tape-free arithmetic on whole tensors, on whatever device they live: what gradient
//! accumulation, gradient clipping and the architect's virtual step need. (Differentiable ops are
//! in `crate::ops`.)

use super::{Data, Tensor};
use crate::device::cpu::{self, elementwise as k};
use crate::device::gpu::mixed::{self, MAX_CANDIDATES};
use crate::device::gpu::{DeviceBuffer, Executor, elementwise as g, optim};
use crate::{Error, Result};

/// Checks that `a` and `b` have one shape and one device; `op` names the caller for the error.
pub(crate) fn check_same(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("{:?}", a.shape()), b.shape()));
    }
    if a.device() != b.device() {
        return Err(Error::invalid(
            op,
            format!(
                "tensors on {} and {} cannot be combined",
                a.device(),
                b.device()
            ),
        ));
    }
    Ok(())
}

impl Tensor {
    /// `self + other` (equal shapes, one device).
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        check_same("Tensor::add", self, other)?;
        match (self.storage(), other.storage()) {
            (Data::Cpu(a), Data::Cpu(b)) => Tensor::from_vec(k::add(a, b), self.shape()),
            (Data::Gpu(exec, a), Data::Gpu(_, b)) => {
                Tensor::from_buffer(g::add(exec, a, b)?, self.shape(), self.device())
            }
            _ => unreachable!("check_same compared the devices"),
        }
    }

    /// `terms[0] + terms[1] + …` (at least one term; equal shapes, one device), added in that
    /// order: the bits of adding them two at a time, but in one pass over the data (on a GPU, one
    /// launch per [`MAX_CANDIDATES`] terms) instead of one per term.
    pub fn sum_of(terms: &[Tensor]) -> Result<Tensor> {
        const OP: &str = "Tensor::sum_of";
        let Some(first) = terms.first() else {
            return Err(Error::invalid(OP, "no terms to add"));
        };
        for t in &terms[1..] {
            check_same(OP, first, t)?;
        }
        if terms.len() == 1 {
            return Ok(first.clone());
        }
        match gpu_buffers(OP, terms)? {
            None => {
                let xs: Vec<&[f32]> = terms.iter().map(|t| t.data()).collect();
                Tensor::from_vec(k::sum(&xs), first.shape())
            }
            Some((exec, buffers)) => {
                let (head, mut rest) = buffers.split_at(MAX_CANDIDATES.min(buffers.len()));
                let mut acc = mixed::sum(exec, head)?;
                // Each later launch adds up to MAX_CANDIDATES − 1 more terms to the sum so far.
                while !rest.is_empty() {
                    let (next, after) = rest.split_at((MAX_CANDIDATES - 1).min(rest.len()));
                    let xs: Vec<&DeviceBuffer<f32>> =
                        std::iter::once(&acc).chain(next.iter().copied()).collect();
                    acc = mixed::sum(exec, &xs)?;
                    rest = after;
                }
                Tensor::from_buffer(acc, first.shape(), first.device())
            }
        }
    }

    /// `s · self`.
    pub fn scaled(&self, s: f32) -> Result<Tensor> {
        match self.storage() {
            Data::Cpu(x) => Tensor::from_vec(k::scale(x, s), self.shape()),
            Data::Gpu(exec, x) => {
                Tensor::from_buffer(g::scale(exec, x, s)?, self.shape(), self.device())
            }
        }
    }

    /// `a·self + b·other` (equal shapes, one device), each product rounded before the sum, with
    /// the same bits on every device.
    pub fn lincomb(&self, a: f32, other: &Tensor, b: f32) -> Result<Tensor> {
        check_same("Tensor::lincomb", self, other)?;
        match (self.storage(), other.storage()) {
            (Data::Cpu(x), Data::Cpu(z)) => Tensor::from_vec(k::lincomb(a, x, b, z), self.shape()),
            (Data::Gpu(exec, x), Data::Gpu(_, z)) => {
                Tensor::from_buffer(g::lincomb(exec, a, x, b, z)?, self.shape(), self.device())
            }
            _ => unreachable!("check_same compared the devices"),
        }
    }

    /// The global L2 norm `√(Σ t²)` over every element of every tensor (all on one device),
    /// accumulated in f64 in a fixed order. An empty list has norm 0.
    pub fn global_norm(tensors: &[Tensor]) -> Result<f32> {
        if tensors.is_empty() {
            return Ok(0.0);
        }
        match gpu_buffers("Tensor::global_norm", tensors)? {
            None => {
                let squares: f64 = tensors
                    .iter()
                    .map(|t| cpu::dot_f64(t.data(), t.data()))
                    .sum();
                Ok(squares.sqrt() as f32)
            }
            Some((exec, buffers)) => {
                let norm = optim::grad_norm(exec, &buffers)?;
                Ok(exec.to_host(&norm)?[0])
            }
        }
    }

    /// `s · t` for every tensor (all on one device), as [`Tensor::scaled`] each: on a GPU in one
    /// launch, however many tensors.
    pub fn scaled_all(tensors: &[Tensor], s: f32) -> Result<Vec<Tensor>> {
        if tensors.is_empty() {
            return Ok(Vec::new());
        }
        match gpu_buffers("Tensor::scaled_all", tensors)? {
            None => tensors.iter().map(|t| t.scaled(s)).collect(),
            Some((exec, buffers)) => optim::scale_all(exec, &buffers, s)?
                .into_iter()
                .zip(tensors)
                .map(|(y, t)| Tensor::from_buffer(y, t.shape(), t.device()))
                .collect(),
        }
    }
}

/// A list of tensors' device buffers, with the executor they live on.
type OnGpu<'a> = (&'static dyn Executor, Vec<&'a DeviceBuffer<f32>>);

/// The executor and device buffers of `tensors` (not empty), or `None` on the CPU; an error when
/// they are not all on one device.
fn gpu_buffers<'a>(op: &'static str, tensors: &'a [Tensor]) -> Result<Option<OnGpu<'a>>> {
    let device = tensors[0].device();
    if let Some(other) = tensors.iter().find(|t| t.device() != device) {
        return Err(Error::invalid(
            op,
            format!(
                "tensors on {device} and {} cannot be combined",
                other.device()
            ),
        ));
    }
    let Some(exec) = device.executor()? else {
        return Ok(None);
    };
    let buffers = tensors
        .iter()
        .map(|t| match t.storage() {
            Data::Gpu(_, b) => b,
            Data::Cpu(_) => unreachable!("every tensor is on {device}"),
        })
        .collect();
    Ok(Some((exec, buffers)))
}
