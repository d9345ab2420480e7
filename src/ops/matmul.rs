//! Matrix products: `matmul`, the fully connected layer `linear` and the `embedding` lookup.

use crate::autograd::{Tape, Var};
use crate::device::cpu::matmul::{self as kernel, Mat};
use crate::device::cpu::reduce::column_sums;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The dimensions of a 2-D variable; `what` names it in the error.
fn matrix(tape: &Tape, op: &'static str, what: &str, x: Var) -> Result<[usize; 2]> {
    match *tape.shape(x) {
        [rows, cols] => Ok([rows, cols]),
        ref other => Err(Error::shape(op, format!("a 2-D {what}"), other)),
    }
}

/// `a·b` (plus `init` when given, which must hold `rows(a) × cols(b)` elements) as a new tensor.
fn product(a: Mat, b: Mat, init: Option<Vec<f32>>, shape: [usize; 2]) -> Result<Tensor> {
    let (mut c, beta) = match init {
        Some(c) => (c, 1.0),
        None => (vec![0.0; shape[0] * shape[1]], 0.0),
    };
    kernel::gemm(a, b, beta, &mut c);
    Tensor::from_vec(c, &shape)
}

/// The matrix product `[m, k] · [k, n] → [m, n]`. Gradients: `da = dy·bᵀ`, `db = aᵀ·dy`.
pub fn matmul(tape: &mut Tape, a: Var, b: Var) -> Result<Var> {
    let [m, k] = matrix(tape, "matmul", "left operand", a)?;
    let [kb, n] = matrix(tape, "matmul", "right operand", b)?;
    if kb != k {
        return Err(Error::shape(
            "matmul",
            format!("a right operand with {k} rows (the left operand's columns)"),
            tape.shape(b),
        ));
    }
    let (av, bv) = (tape.value(a).clone(), tape.value(b).clone());
    let y = product(
        Mat::new(av.data(), m, k),
        Mat::new(bv.data(), k, n),
        None,
        [m, n],
    )?;
    // Each input is needed only for the other's gradient.
    let a_saved = tape.requires_grad(b).then_some(av);
    let b_saved = tape.requires_grad(a).then_some(bv);
    Ok(tape.record("matmul", y, &[a, b], move |dy, needs| {
        let dy = Mat::new(dy.data(), m, n);
        let da = match (needs[0], &b_saved) {
            (true, Some(bv)) => Some(product(dy, Mat::new(bv.data(), k, n).t(), None, [m, k])?),
            _ => None,
        };
        let db = match (needs[1], &a_saved) {
            (true, Some(av)) => Some(product(Mat::new(av.data(), m, k).t(), dy, None, [k, n])?),
            _ => None,
        };
        Ok(vec![da, db])
    }))
}

/// The fully connected layer `y = x·Wᵀ + b` for `x: [n, in]`, `weight: [out, in]` (PyTorch's
/// layout) and an optional `bias: [out]`, giving `[n, out]`. Gradients: `dx = dy·W`,
/// `dW = dyᵀ·x`, `db = Σ_rows dy`.
pub fn linear(tape: &mut Tape, x: Var, weight: Var, bias: Option<Var>) -> Result<Var> {
    let [n, features] = matrix(tape, "linear", "input", x)?;
    let [out, w_in] = matrix(tape, "linear", "weight", weight)?;
    if w_in != features {
        return Err(Error::shape(
            "linear",
            format!("a weight of shape [out, {features}] (the input's features)"),
            tape.shape(weight),
        ));
    }
    if let Some(b) = bias
        && tape.shape(b) != [out]
    {
        return Err(Error::shape(
            "linear",
            format!("a bias of shape [{out}] (the weight's rows)"),
            tape.shape(b),
        ));
    }
    let (xv, wv) = (tape.value(x).clone(), tape.value(weight).clone());
    let init = bias.map(|b| tape.value(b).data().repeat(n));
    let y = product(
        Mat::new(xv.data(), n, features),
        Mat::new(wv.data(), out, features).t(),
        init,
        [n, out],
    )?;
    let x_saved = tape.requires_grad(weight).then_some(xv);
    let w_saved = tape.requires_grad(x).then_some(wv);
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    Ok(tape.record("linear", y, &inputs, move |dy, needs| {
        let g = Mat::new(dy.data(), n, out);
        let dx = match (needs[0], &w_saved) {
            (true, Some(wv)) => Some(product(
                g,
                Mat::new(wv.data(), out, features),
                None,
                [n, features],
            )?),
            _ => None,
        };
        let dw = match (needs[1], &x_saved) {
            (true, Some(xv)) => Some(product(
                g.t(),
                Mat::new(xv.data(), n, features),
                None,
                [out, features],
            )?),
            _ => None,
        };
        let mut grads = vec![dx, dw];
        if let Some(&need_bias) = needs.get(2) {
            let db = need_bias.then(|| Tensor::from_vec(column_sums(dy.data(), n, out), &[out]));
            grads.push(db.transpose()?);
        }
        Ok(grads)
    }))
}

/// Rows of `weight: [vocab, dim]` picked by `ids`, giving `[ids.len(), dim]`. The gradient adds
/// row `r` of `dy` into row `ids[r]` of a zero `[vocab, dim]` table, in `r` order, so repeated
/// ids accumulate deterministically.
pub fn embedding(tape: &mut Tape, weight: Var, ids: &[usize]) -> Result<Var> {
    let [vocab, dim] = matrix(tape, "embedding", "weight", weight)?;
    if ids.is_empty() {
        return Err(Error::invalid("embedding", "no ids to look up"));
    }
    if let Some(&bad) = ids.iter().find(|&&id| id >= vocab) {
        return Err(Error::invalid(
            "embedding",
            format!("id {bad} is out of range for a vocabulary of {vocab}"),
        ));
    }
    let y = Tensor::from_vec(
        kernel::gather_rows(tape.value(weight).data(), dim, ids),
        &[ids.len(), dim],
    )?;
    let ids = ids.to_vec();
    Ok(tape.record("embedding", y, &[weight], move |dy, _| {
        Ok(vec![Some(Tensor::from_vec(
            kernel::scatter_add_rows(dy.data(), dim, &ids, vocab),
            &[vocab, dim],
        )?)])
    }))
}
