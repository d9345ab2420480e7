//! Softmax and log-softmax along any dimension (the DARTS architecture weights are
//! `softmax(α)` along the candidate-op dimension), and the fused label-smoothed cross-entropy loss.

use crate::autograd::{Tape, Var};
use crate::device::cpu::softmax::{self as kernel, Lanes};
use crate::device::gpu::matmul::upload_ids;
use crate::device::gpu::softmax as gpu;
use crate::ops::{binary, buffer, unary};
use crate::tensor::{Data, Tensor};
use crate::{Error, Result};

/// The lanes of `x` along `dim`, or an error naming `op` when `x` has no such dimension.
fn lanes(tape: &Tape, op: &'static str, x: Var, dim: usize) -> Result<Lanes> {
    let shape = tape.shape(x);
    if dim >= shape.len() {
        return Err(Error::invalid(
            op,
            format!("dimension {dim} is out of range for shape {shape:?}"),
        ));
    }
    Ok(Lanes::new(shape, dim))
}

/// `softmax(x)` along `dim`: `yⱼ = exp(xⱼ − max) / Σₖ exp(xₖ − max)`, for any dimension of any
/// rank (a 1-D vector along dim 0 included). Backward from the saved output:
/// `dx = y ⊙ (dy − Σ_dim dy⊙y)`.
pub fn softmax(tape: &mut Tape, x: Var, dim: usize) -> Result<Var> {
    let lanes = lanes(tape, "softmax", x, dim)?;
    let y = unary(
        tape.value(x),
        |v| kernel::softmax(v, lanes),
        |e, b| gpu::softmax(e, b, lanes),
    )?;
    let saved = y.clone();
    Ok(tape.record("softmax", y, &[x], move |dy, _| {
        let dx = binary(
            "softmax",
            &saved,
            dy,
            |y, d| kernel::softmax_backward(y, d, lanes),
            |e, y, d| gpu::softmax_backward(e, y, d, lanes),
        )?;
        Ok(vec![Some(dx)])
    }))
}

/// `log softmax(x)` along `dim`: `yⱼ = xⱼ − log Σₖ exp(xₖ)`, computed without overflow. Backward
/// from the saved output: `dx = dy − exp(y) · Σ_dim dy`.
pub fn log_softmax(tape: &mut Tape, x: Var, dim: usize) -> Result<Var> {
    let lanes = lanes(tape, "log_softmax", x, dim)?;
    let y = unary(
        tape.value(x),
        |v| kernel::log_softmax(v, lanes),
        |e, b| gpu::log_softmax(e, b, lanes),
    )?;
    let saved = y.clone();
    Ok(tape.record("log_softmax", y, &[x], move |dy, _| {
        let dx = binary(
            "log_softmax",
            &saved,
            dy,
            |y, d| kernel::log_softmax_backward(y, d, lanes),
            |e, y, d| gpu::log_softmax_backward(e, y, d, lanes),
        )?;
        Ok(vec![Some(dx)])
    }))
}

/// The dimensions `[N, K]` of a logits matrix, or an error naming `op`.
fn logits_shape(op: &'static str, logits: &Tensor) -> Result<[usize; 2]> {
    match *logits.shape() {
        [n, k] => Ok([n, k]),
        ref other => Err(Error::shape(op, "logits of 2 dimensions [N, K]", other)),
    }
}

/// The mean cross-entropy of `logits: [N, K]` against class `targets` (one per row), with label
/// smoothing `ε` as PyTorch's `CrossEntropyLoss(label_smoothing=ε)`:
/// `lossᵢ = −(1−ε)·log p_{i,tᵢ} − (ε/K)·Σₖ log p_{i,k}` with `p = softmax(logits)` per row,
/// averaged over the rows into a `[1]` tensor. Log-softmax and loss are fused (no one-hot is
/// built); the backward is `dlogits = (p − q) · dloss / N` with `q = (1−ε)·onehot(t) + ε/K`.
pub fn cross_entropy(
    tape: &mut Tape,
    logits: Var,
    targets: &[usize],
    label_smoothing: f32,
) -> Result<Var> {
    const OP: &str = "cross_entropy";
    let [n, k] = logits_shape(OP, tape.value(logits))?;
    if targets.len() != n {
        return Err(Error::invalid(
            OP,
            format!("{} targets for {n} rows of logits", targets.len()),
        ));
    }
    if let Some(&bad) = targets.iter().find(|&&t| t >= k) {
        return Err(Error::invalid(
            OP,
            format!("target class {bad} is out of range for {k} classes"),
        ));
    }
    if !(0.0..1.0).contains(&label_smoothing) {
        return Err(Error::invalid(
            OP,
            format!("label smoothing {label_smoothing} is outside [0, 1)"),
        ));
    }
    let x = tape.value(logits).clone();
    if let Data::Gpu(exec, xb) = x.storage() {
        let device = x.device();
        let targets = upload_ids(exec, targets, k)?;
        let loss = gpu::cross_entropy(exec, xb, &targets, k, label_smoothing)?;
        let loss = Tensor::from_buffer(loss, &[1], device)?;
        return Ok(tape.record(OP, loss, &[logits], move |dy, _| {
            let dx = gpu::cross_entropy_backward(
                exec,
                buffer(&x),
                &targets,
                k,
                label_smoothing,
                buffer(dy),
            )?;
            Ok(vec![Some(Tensor::from_buffer(dx, &[n, k], device)?)])
        }));
    }
    let lse = kernel::row_log_sum_exp(x.data(), k);
    let loss = kernel::cross_entropy(x.data(), k, &lse, targets, label_smoothing);
    let targets = targets.to_vec();
    Ok(
        tape.record(OP, Tensor::scalar(loss as f32), &[logits], move |dy, _| {
            let scale = dy.data()[0] as f64 / n as f64;
            let dx =
                kernel::cross_entropy_backward(x.data(), k, &lse, &targets, label_smoothing, scale);
            Ok(vec![Some(Tensor::from_vec(dx, &[n, k])?)])
        }),
    )
}

/// The predicted class of each row of `logits: [N, K]` (the first maximum wins a tie), for
/// counting correct predictions. Runs on the host (logits on a device are copied back).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<usize>> {
    let [_, k] = logits_shape("argmax_rows", logits)?;
    Ok(kernel::argmax_rows(logits.to_host()?.data(), k))
}
