//! Matrix products: `matmul`, the fully connected layer `linear` and the `embedding` lookup.

use crate::autograd::{Tape, Var};
use crate::device::cpu::matmul::{self as kernel, Mat};
use crate::device::cpu::reduce::column_sums;
use crate::device::gpu::matmul::{self as gpu, DeviceMat};
use crate::ops::conv::{Conv2dParams, conv2d};
use crate::ops::shape::reshape;
use crate::ops::{buffer, common_device};
use crate::tensor::{Data, Tensor};
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

/// A tensor seen as a row-major `rows × cols` matrix, transposed when `t` is set.
#[derive(Clone, Copy)]
struct Operand<'a> {
    value: &'a Tensor,
    rows: usize,
    cols: usize,
    t: bool,
}

impl<'a> Operand<'a> {
    fn new(value: &'a Tensor, rows: usize, cols: usize) -> Operand<'a> {
        Operand {
            value,
            rows,
            cols,
            t: false,
        }
    }

    fn t(self) -> Operand<'a> {
        Operand { t: !self.t, ..self }
    }

    fn host(&self) -> Mat<'a> {
        let m = Mat::new(self.value.data(), self.rows, self.cols);
        if self.t { m.t() } else { m }
    }

    fn device(&self) -> DeviceMat<'a> {
        let m = DeviceMat::new(buffer(self.value), self.rows, self.cols);
        if self.t { m.t() } else { m }
    }
}

/// `a·b` on the operands' device, as a new `shape` tensor.
fn multiply(op: &'static str, a: Operand, b: Operand, shape: [usize; 2]) -> Result<Tensor> {
    let device = common_device(op, &[a.value, b.value])?;
    match device.executor()? {
        None => product(a.host(), b.host(), None, shape),
        Some(exec) => {
            let mut c = exec.alloc(shape[0] * shape[1])?;
            gpu::gemm(exec, a.device(), b.device(), 0.0, &mut c)?;
            Tensor::from_buffer(c, &shape, device)
        }
    }
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
    let y = multiply(
        "matmul",
        Operand::new(&av, m, k),
        Operand::new(&bv, k, n),
        [m, n],
    )?;
    // Each input is needed only for the other's gradient.
    let a_saved = tape.requires_grad(b).then_some(av);
    let b_saved = tape.requires_grad(a).then_some(bv);
    Ok(tape.record("matmul", y, &[a, b], move |dy, needs| {
        let g = Operand::new(dy, m, n);
        let da = match (needs[0], &b_saved) {
            (true, Some(bv)) => Some(multiply("matmul", g, Operand::new(bv, k, n).t(), [m, k])?),
            _ => None,
        };
        let db = match (needs[1], &a_saved) {
            (true, Some(av)) => Some(multiply("matmul", Operand::new(av, m, k).t(), g, [k, n])?),
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
    let mut values = vec![tape.value(x), tape.value(weight)];
    values.extend(bias.map(|b| tape.value(b)));
    if common_device("linear", &values)?.is_gpu() {
        return linear_as_conv(tape, x, weight, bias, [n, features, out]);
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

/// [`linear`] on a GPU device, as the 1×1 convolution it is: `x` seen as `[n, in, 1, 1]`, the
/// weight as `[out, in, 1, 1]`, so the convolution kernels (a GEMM and a bias pass) do the work.
fn linear_as_conv(
    tape: &mut Tape,
    x: Var,
    weight: Var,
    bias: Option<Var>,
    [n, features, out]: [usize; 3],
) -> Result<Var> {
    let x4 = reshape(tape, x, &[n, features, 1, 1])?;
    let w4 = reshape(tape, weight, &[out, features, 1, 1])?;
    let y = conv2d(tape, x4, w4, bias, Conv2dParams::default())?;
    reshape(tape, y, &[n, out])
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
    let wv = tape.value(weight);
    let shape = [ids.len(), dim];
    match wv.storage() {
        Data::Cpu(w) => {
            let y = Tensor::from_vec(kernel::gather_rows(w, dim, ids), &shape)?;
            let ids = ids.to_vec();
            Ok(tape.record("embedding", y, &[weight], move |dy, _| {
                Ok(vec![Some(Tensor::from_vec(
                    kernel::scatter_add_rows(dy.data(), dim, &ids, vocab),
                    &[vocab, dim],
                )?)])
            }))
        }
        Data::Gpu(exec, w) => {
            let device = wv.device();
            let ids = gpu::upload_ids(exec, ids, vocab)?;
            let y = Tensor::from_buffer(gpu::gather_rows(exec, w, dim, &ids)?, &shape, device)?;
            Ok(tape.record("embedding", y, &[weight], move |dy, _| {
                let table = gpu::scatter_add_rows(exec, buffer(dy), dim, &ids, vocab)?;
                Ok(vec![Some(Tensor::from_buffer(
                    table,
                    &[vocab, dim],
                    device,
                )?)])
            }))
        }
    }
}
