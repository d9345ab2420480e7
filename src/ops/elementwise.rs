//! Activations and elementwise arithmetic, including the DARTS mixed-op sum.

use crate::autograd::{Tape, Var};
use crate::device::cpu::{self, elementwise as k};
use crate::ops::same_shape;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A tensor with `x`'s shape holding `data`.
fn like(x: &Tensor, data: Vec<f32>) -> Result<Tensor> {
    Tensor::from_vec(data, x.shape())
}

/// `max(x, 0)`; the gradient passes where `x > 0`.
pub fn relu(tape: &mut Tape, x: Var) -> Result<Var> {
    let xv = tape.value(x).clone();
    let y = like(&xv, k::relu(xv.data()))?;
    Ok(tape.record("relu", y, &[x], move |dy, _| {
        Ok(vec![Some(like(
            &xv,
            k::relu_backward(xv.data(), dy.data()),
        )?)])
    }))
}

/// `tanh(x)`; the gradient is `dy · (1 − y²)`.
pub fn tanh(tape: &mut Tape, x: Var) -> Result<Var> {
    let y = tape.value(x).map(f32::tanh);
    let saved = y.clone();
    Ok(tape.record("tanh", y, &[x], move |dy, _| {
        Ok(vec![Some(like(
            &saved,
            k::tanh_backward(saved.data(), dy.data()),
        )?)])
    }))
}

/// The logistic sigmoid; the gradient is `dy · y · (1 − y)`.
pub fn sigmoid(tape: &mut Tape, x: Var) -> Result<Var> {
    let xv = tape.value(x);
    let y = like(xv, k::sigmoid(xv.data()))?;
    let saved = y.clone();
    Ok(tape.record("sigmoid", y, &[x], move |dy, _| {
        Ok(vec![Some(like(
            &saved,
            k::sigmoid_backward(saved.data(), dy.data()),
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
    let y = like(
        tape.value(a),
        k::add(tape.value(a).data(), tape.value(b).data()),
    )?;
    Ok(tape.record("add", y, &[a, b], |dy, _| {
        Ok(vec![Some(dy.clone()), Some(dy.clone())])
    }))
}

/// `a − b` (equal shapes).
pub fn sub(tape: &mut Tape, a: Var, b: Var) -> Result<Var> {
    same_shape(tape, "sub", a, b)?;
    let y = like(
        tape.value(a),
        k::sub(tape.value(a).data(), tape.value(b).data()),
    )?;
    Ok(tape.record("sub", y, &[a, b], |dy, needs| {
        let db = if needs[1] { Some(dy.map(|g| -g)) } else { None };
        Ok(vec![Some(dy.clone()), db])
    }))
}

/// `a ⊙ b` (equal shapes); `da = dy ⊙ b`, `db = dy ⊙ a`.
pub fn mul(tape: &mut Tape, a: Var, b: Var) -> Result<Var> {
    same_shape(tape, "mul", a, b)?;
    let (av, bv) = (tape.value(a).clone(), tape.value(b).clone());
    let y = like(&av, k::mul(av.data(), bv.data()))?;
    Ok(tape.record("mul", y, &[a, b], move |dy, needs| {
        let da = if needs[0] {
            Some(like(&av, k::mul(dy.data(), bv.data()))?)
        } else {
            None
        };
        let db = if needs[1] {
            Some(like(&bv, k::mul(dy.data(), av.data()))?)
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
    let y = tape.value(x).map(|v| v * s);
    Ok(tape.record("scale", y, &[x], move |dy, _| {
        Ok(vec![Some(dy.map(|g| g * s))])
    }))
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
    let slices: Vec<&[f32]> = values.iter().map(|t| t.data()).collect();
    let y = like(&values[0], k::weighted_sum(&slices, w.data()))?;
    let mut inputs = xs.to_vec();
    inputs.push(weights);
    Ok(tape.record("weighted_sum", y, &inputs, move |dy, needs| {
        let mut grads = Vec::with_capacity(count + 1);
        for (i, &wi) in w.data().iter().enumerate() {
            grads.push(if needs[i] {
                Some(dy.map(|g| g * wi))
            } else {
                None
            });
        }
        grads.push(if needs[count] {
            let dw = values
                .iter()
                .map(|x| cpu::dot_f64(dy.data(), x.data()) as f32)
                .collect();
            Some(Tensor::from_vec(dw, &[count])?)
        } else {
            None
        });
        Ok(grads)
    }))
}
