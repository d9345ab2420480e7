//! The DARTS recurrent node, fused: everything a node of the recurrent cell does after its
//! matmul (`c = σ(a)`, `s = s_prev + c ⊙ (f(b) − s_prev)`) in one op with one saved pair of
//! inputs, instead of a split, two activations and three elementwise ops on the tape.

use crate::autograd::{Tape, Var};
use crate::device::cpu::rnn as kernel;
use crate::device::gpu::rnn as gpu;
use crate::ops::{binary, buffer, common_device};
use crate::tensor::Tensor;
use crate::{Error, Result};

pub use crate::device::cpu::rnn::NodeActivation;

const OP: &str = "recurrent_node";

/// Checks that `ch` is `[..., 2·hidden]` and `h_prev` is `[..., hidden]` with the same leading
/// dimensions, and returns `hidden`.
fn node_hidden(tape: &Tape, ch: Var, h_prev: Var) -> Result<usize> {
    let (cs, hs) = (tape.shape(ch), tape.shape(h_prev));
    let Some((&hidden, lead)) = hs.split_last() else {
        return Err(Error::shape(OP, "h_prev with at least 1 dimension", hs));
    };
    match cs.split_last() {
        Some((&width, ch_lead)) if ch_lead == lead && width == 2 * hidden => Ok(hidden),
        _ => {
            let mut want = lead.to_vec();
            want.push(2 * hidden);
            let why = "h_prev's leading dimensions, then twice its last";
            Err(Error::shape(OP, format!("{want:?} ({why})"), cs))
        }
    }
}

/// One DARTS recurrent node after its matmul: `ch = s_prev · W` of shape `[..., 2·hidden]`
/// holds `[a | b]` (the `a` half first), `h_prev = s_prev` is `[..., hidden]`, and the result,
/// of `h_prev`'s shape, is `h_prev + c ⊙ (act(b) − h_prev)` with `c = σ(a)`. Gradients:
/// `da = dy · (act(b) − h_prev) · c · (1 − c)`, `db = dy · c · act′(b)`,
/// `dh_prev = dy · (1 − c)`.
pub fn recurrent_node(tape: &mut Tape, ch: Var, h_prev: Var, act: NodeActivation) -> Result<Var> {
    let hidden = node_hidden(tape, ch, h_prev)?;
    let (cv, hv) = (tape.value(ch).clone(), tape.value(h_prev).clone());
    let y = binary(
        OP,
        &hv,
        &cv,
        |h, c| kernel::node_forward(c, h, hidden, act),
        |e, h, c| gpu::node_forward(e, c, h, hidden, act),
    )?;
    Ok(tape.record(OP, y, &[ch, h_prev], move |dy, needs| {
        let device = common_device(OP, &[&cv, &hv, dy])?;
        let (dch, dh) = match device.executor()? {
            None => {
                let (dch, dh) = kernel::node_backward(cv.data(), hv.data(), dy.data(), hidden, act);
                (
                    Tensor::from_vec(dch, cv.shape())?,
                    Tensor::from_vec(dh, hv.shape())?,
                )
            }
            Some(exec) => {
                let (dch, dh) =
                    gpu::node_backward(exec, buffer(&cv), buffer(&hv), buffer(dy), hidden, act)?;
                (
                    Tensor::from_buffer(dch, cv.shape(), device)?,
                    Tensor::from_buffer(dh, hv.shape(), device)?,
                )
            }
        };
        Ok(vec![needs[0].then_some(dch), needs[1].then_some(dh)])
    }))
}
