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

/// The DARTS mixed op: `Σₖ wₖ · xₖ` with `weights` a 1-D variable of length `k` (typically a row of
/// softmax(α)). Gradients: `dxₖ = wₖ · dy` and `dwₖ = Σᵢ dyᵢ · xₖᵢ` (the latter accumulated in f64),
/// so the architecture weights learn from every candidate op's output.
pub fn weighted_sum(tape: &mut Tape, xs: &[Var], weights: Var) -> Result<Var> {
    let count = xs.len();
    if count == 0 {
        return Err(Error::WrongInputCount {
            op: "weighted_sum",
            expected: "at least 1".into(),
            got: 0,
        });
    }
    if tape.shape(weights) != [count] {
        return Err(Error::shape(
            "weighted_sum",
            format!("weights of shape [{count}] (one per input)"),
            tape.shape(weights),
        ));
    }
    for &x in &xs[1..] {
        same_shape(tape, "weighted_sum", xs[0], x)?;
    }
    let values: Vec<Tensor> = xs.iter().map(|&x| tape.value(x).clone()).collect();
    let w = tape.value(weights).clone();
    let mut all: Vec<&Tensor> = values.iter().collect();
    all.push(&w);
    common_device("weighted_sum", &all)?;
    let y = mixed_forward(&values, &w)?;
    let mut inputs = xs.to_vec();
    inputs.push(weights);
    Ok(tape.record("weighted_sum", y, &inputs, move |dy, needs| {
        // dxₖ = wₖ · dy for the inputs that need it.
        let picks: Vec<usize> = (0..count).filter(|&i| needs[i]).collect();
        let mut scaled = mixed_backward_inputs(dy, &w, &picks)?.into_iter();
        let mut grads: Vec<Option<Tensor>> = needs[..count]
            .iter()
            .map(|&need| if need { scaled.next() } else { None })
            .collect();
        grads.push(if needs[count] {
            Some(mixed_backward_weights(dy, &values)?)
        } else {
            None
        });
        Ok(grads)
    }))
}

/// `Σₖ wₖ · xₖ` on the inputs' device.
fn mixed_forward(xs: &[Tensor], w: &Tensor) -> Result<Tensor> {
    let shape = xs[0].shape();
    match w.storage() {
        Data::Cpu(wd) => {
            let slices: Vec<&[f32]> = xs.iter().map(Tensor::data).collect();
            Tensor::from_vec(k::weighted_sum(&slices, wd), shape)
        }
        Data::Gpu(exec, wb) => {
            let buffers: Vec<_> = xs.iter().map(buffer).collect();
            Tensor::from_buffer(mixed::mixed_forward(exec, &buffers, wb)?, shape, w.device())
        }
    }
}

/// `wₖ · dy` for each `k` of `picks`, on the inputs' device; on a GPU the weights are read there
/// (no copy to the host) and eight gradients come from one launch.
fn mixed_backward_inputs(dy: &Tensor, w: &Tensor, picks: &[usize]) -> Result<Vec<Tensor>> {
    match (dy.storage(), w.storage()) {
        (Data::Cpu(d), Data::Cpu(wd)) => picks
            .iter()
            .map(|&i| Tensor::from_vec(k::scale(d, wd[i]), dy.shape()))
            .collect(),
        (Data::Gpu(exec, d), Data::Gpu(_, wb)) => mixed::mixed_backward_inputs(exec, d, wb, picks)?
            .into_iter()
            .map(|g| Tensor::from_buffer(g, dy.shape(), dy.device()))
            .collect(),
        _ => Err(Error::invalid(
            "weighted_sum backward",
            format!("dy on {} and the weights on {}", dy.device(), w.device()),
        )),
    }
}

/// `dwₖ = Σᵢ dyᵢ · xₖᵢ`, accumulated in f64, on the inputs' device.
fn mixed_backward_weights(dy: &Tensor, xs: &[Tensor]) -> Result<Tensor> {
    match dy.storage() {
        Data::Cpu(d) => {
            let dw = xs
                .iter()
                .map(|x| cpu::dot_f64(d, x.data()) as f32)
                .collect();
            Tensor::from_vec(dw, &[xs.len()])
        }
        Data::Gpu(exec, d) => {
            let buffers: Vec<_> = xs.iter().map(buffer).collect();
            Tensor::from_buffer(
                mixed::mixed_backward_weights(exec, d, &buffers)?,
                &[xs.len()],
                dy.device(),
            )
        }
    }
}
