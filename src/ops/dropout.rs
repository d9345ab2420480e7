//! Dropout ops: inverted dropout, variational (locked) dropout for sequences and DARTS' drop path.
//!
//! Each is `y = x ⊙ m` for a fixed mask `m` of multipliers (0 for a dropped element, `1/(1−p)` for
//! a kept one, so the expectation of `y` is `x`), hence `dx = dy ⊙ m`. Element `i` of a mask is
//! kept iff `uniform_at(seed, i) ≥ p`, so with a fixed seed the ops are deterministic.

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::device::cpu::dropout as k;
use crate::device::gpu::dropout as gpu;
use crate::ops::binary;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Checks that a drop probability lies in [0, 1).
fn check_probability(op: &'static str, p: f32) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("the drop probability {p} is outside [0, 1)"),
        ))
    }
}

/// The multipliers of an inverted-dropout mask of `n` elements (see [`k::mask`]), drawn on
/// `device`: every device draws the same bits.
fn mask(n: usize, p: f32, seed: u64, device: Device) -> Result<Tensor> {
    match device.executor()? {
        None => Tensor::from_vec(k::mask(n, p, seed), &[n]),
        Some(exec) => Tensor::from_buffer(gpu::mask(exec, n, p, seed)?, &[n], device),
    }
}

/// `x ⊙ m` with a mask of `n` elements from `(p, seed)`, broadcast as in [`k::apply_mask`]; the
/// gradient is `dy ⊙ m`.
fn apply(
    tape: &mut Tape,
    op: &'static str,
    x: Var,
    (n, p, seed): (usize, f32, u64),
    inner: usize,
) -> Result<Var> {
    let xv = tape.value(x);
    let mask = mask(n, p, seed, xv.device())?;
    let multiply = move |t: &Tensor, m: &Tensor| {
        binary(
            op,
            t,
            m,
            move |t, m| k::apply_mask(t, m, inner),
            move |e, t, m| gpu::apply_mask(e, t, m, inner),
        )
    };
    let y = multiply(xv, &mask)?;
    Ok(tape.record(op, y, &[x], move |dy, _| {
        Ok(vec![Some(multiply(dy, &mask)?)])
    }))
}

/// Inverted dropout with probability `p` in [0, 1): element `i` is kept iff
/// `uniform_at(seed, i) ≥ p` and scaled by `1/(1−p)`. `p = 0` returns `x` itself.
pub fn dropout(tape: &mut Tape, x: Var, p: f32, seed: u64) -> Result<Var> {
    check_probability("dropout", p)?;
    if p == 0.0 {
        return Ok(x);
    }
    let n = tape.value(x).numel();
    apply(tape, "dropout", x, (n, p, seed), 1)
}

/// Variational (locked) dropout for sequences `x: [T, B, F]`, as in AWD-LSTM and DARTS-RNN: one
/// mask of shape `[B, F]` (mask index `b·F + f`) shared by all `T` steps. `p = 0` returns `x`.
pub fn variational_dropout(tape: &mut Tape, x: Var, p: f32, seed: u64) -> Result<Var> {
    check_probability("variational_dropout", p)?;
    let [_, b, f] = *tape.shape(x) else {
        return Err(Error::shape(
            "variational_dropout",
            "3 dimensions (T, B, F)",
            tape.shape(x),
        ));
    };
    if p == 0.0 {
        return Ok(x);
    }
    apply(tape, "variational_dropout", x, (b * f, p, seed), 1)
}

/// DARTS' drop path for `x: [N, ...]`: one keep/drop decision per sample `n` (kept iff
/// `uniform_at(seed, n) ≥ drop_prob`), kept samples scaled by `1/(1−drop_prob)`. `drop_prob = 0`
/// returns `x`.
pub fn drop_path(tape: &mut Tape, x: Var, drop_prob: f32, seed: u64) -> Result<Var> {
    check_probability("drop_path", drop_prob)?;
    if drop_prob == 0.0 {
        return Ok(x);
    }
    let shape = tape.shape(x);
    let samples = shape[0];
    let per_sample = shape[1..].iter().product();
    apply(tape, "drop_path", x, (samples, drop_prob, seed), per_sample)
}
