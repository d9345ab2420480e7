//! Shape ops: reshape, concatenation, rectangular slices and DARTS' Zero op. All are linear maps
//! that only move elements, so each backward moves the gradient back the other way.

use std::ops::Range;

use crate::autograd::{Tape, Var};
use crate::device::cpu::shape as k;
use crate::device::gpu::shape as gpu;
use crate::ops::{buffer, common_device, nchw, unary_to};
use crate::tensor::{Tensor, check_shape};
use crate::{Error, Result};

/// `x` seen with another shape of the same element count (no copy); the gradient is reshaped
/// back to `x`'s shape.
pub fn reshape(tape: &mut Tape, x: Var, shape: &[usize]) -> Result<Var> {
    check_shape("reshape", shape)?;
    let xv = tape.value(x);
    if shape.iter().product::<usize>() != xv.numel() {
        return Err(Error::shape(
            "reshape",
            format!(
                "{} elements (the input's shape {:?})",
                xv.numel(),
                xv.shape()
            ),
            shape,
        ));
    }
    let y = xv.reshape(shape)?;
    let in_shape = xv.shape().to_vec();
    Ok(tape.record("reshape", y, &[x], move |dy, _| {
        Ok(vec![Some(dy.reshape(&in_shape)?)])
    }))
}

/// Concatenation along `dim` (the channels of NCHW are dim 1); all other dimensions must agree.
/// The gradient of input `i` is the slice of the output's gradient that input `i` filled.
pub fn concat(tape: &mut Tape, xs: &[Var], dim: usize) -> Result<Var> {
    let Some(&first) = xs.first() else {
        return Err(Error::WrongInputCount {
            op: "concat",
            expected: "at least 1".into(),
            got: 0,
        });
    };
    let first_shape = tape.shape(first).to_vec();
    if dim >= first_shape.len() {
        return Err(Error::invalid(
            "concat",
            format!("dimension {dim} is out of range for shape {first_shape:?}"),
        ));
    }
    let mut sizes = Vec::with_capacity(xs.len());
    for &x in xs {
        let shape = tape.shape(x);
        let agrees = shape.len() == first_shape.len()
            && (0..shape.len()).all(|d| d == dim || shape[d] == first_shape[d]);
        if !agrees {
            return Err(Error::shape(
                "concat",
                format!("{first_shape:?} in every dimension but {dim} (the first input's shape)"),
                shape,
            ));
        }
        sizes.push(shape[dim]);
    }
    let outer: usize = first_shape[..dim].iter().product();
    let inner: usize = first_shape[dim + 1..].iter().product();
    let values: Vec<&Tensor> = xs.iter().map(|&x| tape.value(x)).collect();
    let device = common_device("concat", &values)?;
    let mut out_shape = first_shape;
    out_shape[dim] = sizes.iter().sum();
    let y = match device.executor()? {
        None => {
            let slices: Vec<&[f32]> = values.iter().map(|v| v.data()).collect();
            Tensor::from_vec(k::concat(&slices, &sizes, outer, inner), &out_shape)?
        }
        Some(exec) => {
            let buffers: Vec<_> = values.iter().map(|v| buffer(v)).collect();
            let data = gpu::concat(exec, &buffers, &sizes, outer, inner)?;
            Tensor::from_buffer(data, &out_shape, device)?
        }
    };
    Ok(tape.record("concat", y, xs, move |dy, needs| {
        let mut ranges: Vec<Range<usize>> = out_shape.iter().map(|&n| 0..n).collect();
        let mut start = 0;
        let mut grads = Vec::with_capacity(sizes.len());
        for (&size, &need) in sizes.iter().zip(needs) {
            ranges[dim] = start..start + size;
            start += size;
            grads.push(if need {
                let mut shape = out_shape.clone();
                shape[dim] = size;
                Some(unary_to(
                    dy,
                    &shape,
                    |d| k::slice(d, &out_shape, &ranges),
                    |e, d| gpu::slice(e, d, &out_shape, &ranges),
                )?)
            } else {
                None
            });
        }
        Ok(grads)
    }))
}

/// A rectangular slice with one range per dimension: channel slices (`x[:, a..b]`) and spatial
/// slices with an offset (FactorizedReduce's `x[:, :, 1:, 1:]`). The gradient is zeros of `x`'s
/// shape with the slice's gradient written back in place.
pub fn slice(tape: &mut Tape, x: Var, ranges: &[Range<usize>]) -> Result<Var> {
    let in_shape = tape.shape(x).to_vec();
    if ranges.len() != in_shape.len() {
        return Err(Error::invalid(
            "slice",
            format!(
                "expected {} ranges (one per dimension of {in_shape:?}), got {}",
                in_shape.len(),
                ranges.len()
            ),
        ));
    }
    for (d, (r, &n)) in ranges.iter().zip(&in_shape).enumerate() {
        if r.start >= r.end || r.end > n {
            return Err(Error::invalid(
                "slice",
                format!("range {r:?} of dimension {d} is empty or outside 0..{n}"),
            ));
        }
    }
    let ranges = ranges.to_vec();
    let out_shape: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    let y = unary_to(
        tape.value(x),
        &out_shape,
        |v| k::slice(v, &in_shape, &ranges),
        |e, b| gpu::slice(e, b, &in_shape, &ranges),
    )?;
    Ok(tape.record("slice", y, &[x], move |dy, _| {
        let dx = unary_to(
            dy,
            &in_shape,
            |d| k::slice_backward(d, &in_shape, &ranges),
            |e, d| gpu::slice_backward(e, d, &in_shape, &ranges),
        )?;
        Ok(vec![Some(dx)])
    }))
}

/// DARTS' Zero op with stride `s` on NCHW: zeros of shape `[N, C, ⌈H/s⌉, ⌈W/s⌉]` (the shape of
/// `x[:, :, ::s, ::s] · 0`). The output does not depend on `x`, so no gradient flows back (`x`
/// gets zero from it).
pub fn zero(tape: &mut Tape, x: Var, stride: usize) -> Result<Var> {
    let [n, c, h, w] = nchw(tape, "zero", x)?;
    if stride == 0 {
        return Err(Error::invalid("zero", "the stride must be at least 1"));
    }
    let shape = [n, c, h.div_ceil(stride), w.div_ceil(stride)];
    let y = Tensor::zeros_on(&shape, tape.value(x).device())?;
    Ok(tape.record("zero", y, &[x], |_, _| Ok(vec![None])))
}
