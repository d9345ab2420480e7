//! Activations and elementwise arithmetic, including the DARTS mixed-op sum.

use crate::autograd::{Tape, Var};
use crate::device::cpu::{self, elementwise as k};
use crate::device::gpu::{elementwise as g, mixed};
use crate::ops::{binary, buffer, common_device, same_shape, unary};
use crate::tensor::{Data, Tensor};
use crate::{Error, Result};

/// `max(x, 0)`; the gradient passes where `x > 0`.
pub fn relu(tape: &mut Tape, x: Var) -> Result<Var> {
    let xv = tape.value(x).clone();
    let y = unary(&xv, k::relu, g::relu)?;
    Ok(tape.record("relu", y, &[x], move |dy, _| {
        Ok(vec![Some(binary(
            "relu",
            &xv,
            dy,
            k::relu_backward,
            g::relu_backward,
        )?)])
    }))
}

/// `tanh(x)`; the gradient is `dy · (1 − y²)`.
pub fn tanh(tape: &mut Tape, x: Var) -> Result<Var> {
    let y = unary(tape.value(x), k::tanh, g::tanh)?;
    let saved = y.clone();
    Ok(tape.record("tanh", y, &[x], move |dy, _| {
        Ok(vec![Some(binary(
            "tanh",
            &saved,
            dy,
            k::tanh_backward,
            g::tanh_backward,
        )?)])
    }))
}

/// The logistic sigmoid; the gradient is `dy · y · (1 − y)`.
pub fn sigmoid(tape: &mut Tape, x: Var) -> Result<Var> {
    let y = unary(tape.value(x), k::sigmoid, g::sigmoid)?;
    let saved = y.clone();
    Ok(tape.record("sigmoid", y, &[x], move |dy, _| {
        Ok(vec![Some(binary(
            "sigmoid",
            &saved,
            dy,
            k::sigmoid_backward,
            g::sigmoid_backward,
        )?)])
    }))
}

/// The identity: returns `x` itself (DARTS' `skip_connect` in a normal cell).
pub fn identity(_tape: &mut Tape, x: Var) -> Result<Var> {
    Ok(x)
}

/// `a + b` (equal shapes).
pub fn add(tape: &mut Tape, a: Var, b: Var) -> Result<Var> {
    same_shape(tape, "add", a, b)?;
    let y = binary("add", tape.value(a), tape.value(b), k::add, g::add)?;
    Ok(tape.record("add", y, &[a, b], |dy, _| {
        Ok(vec![Some(dy.clone()), Some(dy.clone())])
    }))
}

/// `xs[0] + xs[1] + …` (at least one input, equal shapes), added in that order
/// ([`Tensor::sum_of`]: one pass, one launch on a GPU for up to eight inputs, with the bits of
/// chained [`add`]s); every input's gradient is `dy`. A DARTS node sums its edges with it.
pub fn add_all(tape: &mut Tape, xs: &[Var]) -> Result<Var> {
    let Some(&first) = xs.first() else {
        return Err(Error::WrongInputCount {
            op: "add_all",
            expected: "at least 1".into(),
            got: 0,
        });
    };
    for &x in &xs[1..] {
        same_shape(tape, "add_all", first, x)?;
    }
    let values: Vec<Tensor> = xs.iter().map(|&x| tape.value(x).clone()).collect();
    let y = Tensor::sum_of(&values)?;
    Ok(tape.record("add_all", y, xs, |dy, needs| {
        Ok(needs.iter().map(|&need| need.then(|| dy.clone())).collect())
    }))
}

/// `a − b` (equal shapes).
pub fn sub(tape: &mut Tape, a: Var, b: Var) -> Result<Var> {
    same_shape(tape, "sub", a, b)?;
    let y = binary("sub", tape.value(a), tape.value(b), k::sub, g::sub)?;
    Ok(tape.record("sub", y, &[a, b], |dy, needs| {
        let db = if needs[1] {
            Some(dy.scaled(-1.0)?)
        } else {
            None
        };
        Ok(vec![Some(dy.clone()), db])
    }))
}

/// `a ⊙ b` (equal shapes); `da = dy ⊙ b`, `db = dy ⊙ a`.
pub fn mul(tape: &mut Tape, a: Var, b: Var) -> Result<Var> {
    same_shape(tape, "mul", a, b)?;
    let (av, bv) = (tape.value(a).clone(), tape.value(b).clone());
    let y = binary("mul", &av, &bv, k::mul, g::mul)?;
    Ok(tape.record("mul", y, &[a, b], move |dy, needs| {
        let da = if needs[0] {
            Some(binary("mul", dy, &bv, k::mul, g::mul)?)
        } else {
            None
        };
        let db = if needs[1] {
            Some(binary("mul", dy, &av, k::mul, g::mul)?)
        } else {
            None
        };
        Ok(vec![da, db])
    }))
}

/// `s · x` for a constant scalar `s`.
pub fn scale(tape: &mut Tape, x: Var, s: f32) -> Result<Var> {
    if !s.is_finite() {
        return Err(Error::invalid(
            "scale",
            format!("the factor {s} is not finite"),
        ));
    }
    let y = tape.value(x).scaled(s)?;
    Ok(tape.record("scale", y, &[x], move |dy, _| Ok(vec![Some(dy.scaled(s)?)])))
}

/// The DARTS mixed op: `Σₖ wₖ · xₖ` with `weights` a 1-D variable of length `k`. Gradients:
/// `dxₖ = wₖ · dy` and `dwₖ = Σᵢ dyᵢ · xₖᵢ` (the latter accumulated in f64), so the architecture
/// weights learn from every candidate op's output.
pub fn weighted_sum(tape: &mut Tape, xs: &[Var], weights: Var) -> Result<Var> {
    if !xs.is_empty() && tape.shape(weights) != [xs.len()] {
        return Err(Error::shape(
            "weighted_sum",
            format!("weights of shape [{}] (one per input)", xs.len()),
            tape.shape(weights),
        ));
    }
    weighted_sum_at(tape, xs, weights, 0)
}

/// [`weighted_sum`] with its `k` weights read where they lie in `weights`, a variable of any
/// shape: the `k` consecutive values from flat position `at` (a DARTS edge's row of softmax(α),
/// with no copy of the row). The gradient of `weights` has its whole shape, zero outside the run.
pub fn weighted_sum_at(tape: &mut Tape, xs: &[Var], weights: Var, at: usize) -> Result<Var> {
    const OP: &str = "weighted_sum";
    let count = xs.len();
    let w = check_mixed(tape, OP, xs, weights, at)?;
    let values: Vec<Tensor> = xs.iter().map(|&x| tape.value(x).clone()).collect();
    let y = mixed_forward(&values, &w, at)?;
    let mut inputs = xs.to_vec();
    inputs.push(weights);
    Ok(tape.record(OP, y, &inputs, move |dy, needs| {
        // dxₖ = wₖ · dy for the inputs that need it.
        let picks: Vec<usize> = (0..count).filter(|&i| needs[i]).collect();
        let mut scaled = mixed_backward_inputs(dy, &w, at, count, &picks)?.into_iter();
        let mut grads: Vec<Option<Tensor>> = needs[..count]
            .iter()
            .map(|&need| if need { scaled.next() } else { None })
            .collect();
        grads.push(if needs[count] {
            Some(mixed_backward_weights(dy, &values, &w, at)?)
        } else {
            None
        });
        Ok(grads)
    }))
}

/// Checks the operands of a mixed op `Σₖ weights[at + k] · xs[k]` for `op`: at least one input,
/// all of one shape, `k` weights from `at` within `weights`, everything on one device. Returns the
/// weights' value.
pub(crate) fn check_mixed(
    tape: &Tape,
    op: &'static str,
    xs: &[Var],
    weights: Var,
    at: usize,
) -> Result<Tensor> {
    let count = xs.len();
    if count == 0 {
        return Err(Error::WrongInputCount {
            op,
            expected: "at least 1".into(),
            got: 0,
        });
    }
    let w = tape.value(weights).clone();
    if at + count > w.numel() {
        return Err(Error::invalid(
            op,
            format!(
                "{count} weights from position {at} of weights of shape {:?}",
                w.shape()
            ),
        ));
    }
    for &x in &xs[1..] {
        same_shape(tape, op, xs[0], x)?;
    }
    let mut all: Vec<&Tensor> = xs.iter().map(|&x| tape.value(x)).collect();
    all.push(&w);
    common_device(op, &all)?;
    Ok(w)
}

/// `Σₖ w[at + k] · xₖ` on the inputs' device.
pub(crate) fn mixed_forward(xs: &[Tensor], w: &Tensor, at: usize) -> Result<Tensor> {
    let shape = xs[0].shape();
    match w.storage() {
        Data::Cpu(wd) => {
            let slices: Vec<&[f32]> = xs.iter().map(Tensor::data).collect();
            Tensor::from_vec(k::weighted_sum(&slices, &wd[at..at + xs.len()]), shape)
        }
        Data::Gpu(exec, wb) => {
            let buffers: Vec<_> = xs.iter().map(buffer).collect();
            let run = mixed::WeightRun {
                weights: wb,
                offset: at,
            };
            Tensor::from_buffer(
                mixed::mixed_forward(exec, &buffers, run)?,
                shape,
                w.device(),
            )
        }
    }
}

/// `w[at + k] · dy` for each `k` of `picks` (below `count`), on the inputs' device; on a GPU the
/// weights are read there (no copy to the host) and eight gradients come from one launch.
fn mixed_backward_inputs(
    dy: &Tensor,
    w: &Tensor,
    at: usize,
    count: usize,
    picks: &[usize],
) -> Result<Vec<Tensor>> {
    match (dy.storage(), w.storage()) {
        (Data::Cpu(d), Data::Cpu(wd)) => picks
            .iter()
            .map(|&i| Tensor::from_vec(k::scale(d, wd[at + i]), dy.shape()))
            .collect(),
        (Data::Gpu(exec, d), Data::Gpu(_, wb)) => {
            let run = mixed::WeightRun {
                weights: wb,
                offset: at,
            };
            mixed::mixed_backward_inputs(exec, d, run, count, picks)?
                .into_iter()
                .map(|g| Tensor::from_buffer(g, dy.shape(), dy.device()))
                .collect()
        }
        _ => Err(Error::invalid(
            "weighted_sum backward",
            format!("dy on {} and the weights on {}", dy.device(), w.device()),
        )),
    }
}

/// The weights' gradient, of the shape of `w`: `Σᵢ dyᵢ · xₖᵢ` (accumulated in f64) at `at + k`,
/// zero elsewhere, on the inputs' device.
pub(crate) fn mixed_backward_weights(
    dy: &Tensor,
    xs: &[Tensor],
    w: &Tensor,
    at: usize,
) -> Result<Tensor> {
    match (dy.storage(), w.storage()) {
        (Data::Cpu(d), Data::Cpu(_)) => {
            let mut dw = vec![0.0; w.numel()];
            for (g, x) in dw[at..].iter_mut().zip(xs) {
                *g = cpu::dot_f64(d, x.data()) as f32;
            }
            Tensor::from_vec(dw, w.shape())
        }
        (Data::Gpu(exec, d), Data::Gpu(_, wb)) => {
            let buffers: Vec<_> = xs.iter().map(buffer).collect();
            let run = mixed::WeightRun {
                weights: wb,
                offset: at,
            };
            Tensor::from_buffer(
                mixed::mixed_backward_weights(exec, d, &buffers, run)?,
                w.shape(),
                dy.device(),
            )
        }
        _ => Err(Error::invalid(
            "weighted_sum backward",
            format!("dy on {} and the weights on {}", dy.device(), w.device()),
        )),
    }
}
