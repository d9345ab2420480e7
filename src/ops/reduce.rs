//! Whole-tensor reductions to a scalar, for losses and penalties.

use crate::Result;
use crate::autograd::{Tape, Var};
use crate::device::cpu;
use crate::tensor::Tensor;

/// The sum of all elements, as a `[1]` tensor (accumulated in f64 in a fixed order). Every element
/// gets the output's gradient: `dx = dy · 1`.
pub fn sum(tape: &mut Tape, x: Var) -> Result<Var> {
    scaled_sum(tape, "sum", x, 1.0)
}

/// The mean of all elements, as a `[1]` tensor; `dx = dy / numel`.
pub fn mean(tape: &mut Tape, x: Var) -> Result<Var> {
    let n = tape.value(x).numel() as f64;
    scaled_sum(tape, "mean", x, 1.0 / n)
}

/// `s · Σ x` as a `[1]` tensor; the gradient is `s · dy` broadcast to `x`'s shape.
fn scaled_sum(tape: &mut Tape, op: &'static str, x: Var, s: f64) -> Result<Var> {
    let xv = tape.value(x);
    let y = Tensor::scalar((cpu::sum_f64(xv.data()) * s) as f32);
    let shape = xv.shape().to_vec();
    Ok(tape.record(op, y, &[x], move |dy, _| {
        Ok(vec![Some(Tensor::full(
            &shape,
            (dy.data()[0] as f64 * s) as f32,
        )?)])
    }))
}
