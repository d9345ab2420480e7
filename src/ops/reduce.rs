//! Whole-tensor reductions to a scalar, for losses and penalties.

use crate::Result;
use crate::autograd::{Tape, Var};
use crate::device::cpu;
use crate::device::gpu::reduce as gpu;
use crate::ops::unary_to;

/// The sum of all elements, as a `[1]` tensor (accumulated in f64 in a fixed order). Every element
/// gets the output's gradient: `dx = dy · 1`.
pub fn sum(tape: &mut Tape, x: Var) -> Result<Var> {
    reduction(tape, x, Reduction::Sum)
}

/// The mean of all elements, as a `[1]` tensor; `dx = dy / numel`.
pub fn mean(tape: &mut Tape, x: Var) -> Result<Var> {
    reduction(tape, x, Reduction::Mean)
}

/// Which whole-tensor reduction.
#[derive(Clone, Copy, PartialEq)]
enum Reduction {
    Sum,
    Mean,
}

/// `s · Σ x` as a `[1]` tensor with `s = 1` or `1/numel`; the gradient is `s · dy` broadcast to
/// `x`'s shape.
fn reduction(tape: &mut Tape, x: Var, which: Reduction) -> Result<Var> {
    let xv = tape.value(x);
    let n = xv.numel();
    let (op, s) = match which {
        Reduction::Sum => ("sum", 1.0),
        Reduction::Mean => ("mean", 1.0 / n as f64),
    };
    let y = unary_to(
        xv,
        &[1],
        |v| vec![(cpu::sum_f64(v) * s) as f32],
        |e, b| match which {
            Reduction::Sum => gpu::sum(e, b),
            Reduction::Mean => gpu::mean(e, b),
        },
    )?;
    let shape = xv.shape().to_vec();
    Ok(tape.record(op, y, &[x], move |dy, _| {
        let dx = unary_to(
            dy,
            &shape,
            |d| vec![(d[0] as f64 * s) as f32; n],
            |e, d| match which {
                Reduction::Sum => gpu::sum_backward(e, d, n),
                Reduction::Mean => gpu::mean_backward(e, d, n),
            },
        )?;
        Ok(vec![Some(dx)])
    }))
}
