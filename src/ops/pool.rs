//! Pooling on NCHW tensors: max and average pooling with a square window (DARTS' `max_pool_3x3`
//! and `avg_pool_3x3` candidates, and the auxiliary head), and global average pooling (the
//! classifier's input).

use crate::autograd::{Tape, Var};
use crate::device::cpu::pool::{self as k, PoolGeometry};
use crate::device::gpu::{DeviceBuffer, pool as gpu};
use crate::ops::{buffer, nchw, unary_to};
use crate::tensor::{Data, Tensor};
use crate::{Error, Result};

/// Where max pooling's forward put each window's maximum (plane-relative indices), kept on the
/// device of the input for the backward pass.
enum Argmax {
    Cpu(Vec<u32>),
    Gpu(DeviceBuffer<u32>),
}

/// Checks a pooling's arguments against `x` and returns its geometry. The window must have a
/// positive size and stride, padding at most half the window (so every window holds at least one
/// image element, as PyTorch requires), and it must fit the padded image.
fn geometry(
    tape: &Tape,
    op: &'static str,
    x: Var,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<PoolGeometry> {
    let [n, c, h, w] = nchw(tape, op, x)?;
    if kernel == 0 {
        return Err(Error::invalid(op, "the kernel size must be positive"));
    }
    if stride == 0 {
        return Err(Error::invalid(op, "the stride must be positive"));
    }
    if padding > kernel / 2 {
        return Err(Error::invalid(
            op,
            format!("padding {padding} is more than half the kernel size {kernel}"),
        ));
    }
    if kernel > h.min(w) + 2 * padding {
        return Err(Error::invalid(
            op,
            format!("a {kernel}x{kernel} window does not fit a {h}x{w} image padded by {padding}"),
        ));
    }
    Ok(PoolGeometry {
        planes: n * c,
        h,
        w,
        kernel,
        stride,
        padding,
    })
}

/// Fails unless every offset within a plane fits max pooling's `u32` argmax.
fn check_argmax_fits(op: &'static str, g: &PoolGeometry) -> Result<()> {
    if g.h * g.w > u32::MAX as usize {
        return Err(Error::invalid(
            op,
            format!("a {}x{} plane is too large to index", g.h, g.w),
        ));
    }
    Ok(())
}

/// Max pooling with a `kernel × kernel` window, `stride` and `padding` (padding counts as −inf);
/// the output is `[N, C, ⌊(H + 2p − k)/s⌋ + 1, ⌊(W + 2p − k)/s⌋ + 1]`. Backward routes each
/// output gradient to its window's maximum, saved in forward; the first maximum (row-major) wins
/// ties, as in PyTorch.
pub fn max_pool2d(
    tape: &mut Tape,
    x: Var,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Var> {
    const OP: &str = "max_pool2d";
    let g = geometry(tape, OP, x, kernel, stride, padding)?;
    check_argmax_fits(OP, &g)?;
    let in_shape = tape.shape(x).to_vec();
    let out_shape = [in_shape[0], in_shape[1], g.out_h(), g.out_w()];
    let xv = tape.value(x);
    let (y, argmax) = match xv.storage() {
        Data::Cpu(v) => {
            let (y, argmax) = k::max_pool2d(v, &g);
            (Tensor::from_vec(y, &out_shape)?, Argmax::Cpu(argmax))
        }
        Data::Gpu(exec, b) => {
            let (y, argmax) = gpu::max_pool2d(exec, b, &g)?;
            (
                Tensor::from_buffer(y, &out_shape, xv.device())?,
                Argmax::Gpu(argmax),
            )
        }
    };
    Ok(tape.record(OP, y, &[x], move |dy, _| {
        let dx = match (&argmax, dy.storage()) {
            (Argmax::Cpu(a), Data::Cpu(d)) => {
                Tensor::from_vec(k::max_pool2d_backward(d, a, &g), &in_shape)?
            }
            (Argmax::Gpu(a), Data::Gpu(e, d)) => Tensor::from_buffer(
                gpu::max_pool2d_backward(e, d, a, &g)?,
                &in_shape,
                dy.device(),
            )?,
            _ => {
                return Err(Error::invalid(
                    OP,
                    "the gradient is not on the input's device",
                ));
            }
        };
        Ok(vec![Some(dx)])
    }))
}

/// Average pooling with a `kernel × kernel` window, `stride` and `padding`, not counting padding
/// (PyTorch's `count_include_pad=False`, as DARTS uses): each output is the mean of the in-image
/// elements of its window, so a 3x3 window with padding 1 divides by 4 at a corner, 6 on an edge
/// and 9 inside. Backward spreads each output gradient evenly over those elements.
pub fn avg_pool2d(
    tape: &mut Tape,
    x: Var,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Var> {
    const OP: &str = "avg_pool2d";
    let g = geometry(tape, OP, x, kernel, stride, padding)?;
    let in_shape = tape.shape(x).to_vec();
    let out_shape = [in_shape[0], in_shape[1], g.out_h(), g.out_w()];
    let y = unary_to(
        tape.value(x),
        &out_shape,
        |v| k::avg_pool2d(v, &g),
        |e, b| gpu::avg_pool2d(e, b, &g),
    )?;
    Ok(tape.record(OP, y, &[x], move |dy, _| {
        let dx = unary_to(
            dy,
            &in_shape,
            |d| k::avg_pool2d_backward(d, &g),
            |e, d| gpu::avg_pool2d_backward(e, d, &g),
        )?;
        Ok(vec![Some(dx)])
    }))
}

/// [`max_pool2d`] and [`avg_pool2d`] of the same input through the same window, as one op with two
/// outputs, `[max, avg]`: a DARTS search edge's two pooling candidates. On a GPU each pass is one
/// launch, which reads each window (or gathers each input element's gradients) once for both; on
/// the CPU the two pools run one after the other. The values and gradients are those of the two
/// ops, with the same bits, and the gradients reach `x` average first, as from the two ops.
pub fn max_and_avg_pool2d(
    tape: &mut Tape,
    x: Var,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<[Var; 2]> {
    const OP: &str = "max_and_avg_pool2d";
    let g = geometry(tape, OP, x, kernel, stride, padding)?;
    check_argmax_fits(OP, &g)?;
    let in_shape = tape.shape(x).to_vec();
    let out_shape = [in_shape[0], in_shape[1], g.out_h(), g.out_w()];
    let xv = tape.value(x);
    let device = xv.device();
    let ([y_max, y_avg], argmax) = match xv.storage() {
        Data::Cpu(v) => {
            let (y_max, argmax) = k::max_pool2d(v, &g);
            let y_avg = k::avg_pool2d(v, &g);
            let outputs = [y_max, y_avg].map(|y| Tensor::from_vec(y, &out_shape));
            (outputs, Argmax::Cpu(argmax))
        }
        Data::Gpu(exec, b) => {
            let pools = gpu::max_avg_pool2d(exec, b, &g, [true, true])?;
            let (Some((y_max, argmax)), Some(y_avg)) = (pools.max, pools.avg) else {
                return Err(Error::invalid(OP, "the kernel left an output out"));
            };
            let outputs = [y_max, y_avg].map(|y| Tensor::from_buffer(y, &out_shape, device));
            (outputs, Argmax::Gpu(argmax))
        }
    };
    let outputs = vec![y_max?, y_avg?];
    let vars = tape.record_many(OP, outputs, &[x, x], move |dys, _| {
        let [dx_max, dx_avg] = match (&argmax, &dys[0], &dys[1]) {
            (Argmax::Cpu(a), d_max, d_avg) => {
                let dx_max = d_max
                    .as_ref()
                    .map(|d| k::max_pool2d_backward(d.data(), a, &g));
                let dx_avg = d_avg.as_ref().map(|d| k::avg_pool2d_backward(d.data(), &g));
                [dx_max, dx_avg].map(|dx| dx.map(|dx| Tensor::from_vec(dx, &in_shape)).transpose())
            }
            (Argmax::Gpu(a), d_max, d_avg) => {
                let exec = device.executor()?.ok_or_else(|| {
                    Error::invalid(OP, "the gradient is not on the input's device")
                })?;
                let grads = gpu::MaxAvgGrads {
                    max: d_max.as_ref().map(|d| (buffer(d), a)),
                    avg: d_avg.as_ref().map(buffer),
                };
                let dxs = gpu::max_avg_pool2d_backward(exec, grads, &g)?;
                dxs.map(|dx| {
                    dx.map(|dx| Tensor::from_buffer(dx, &in_shape, device))
                        .transpose()
                })
            }
        };
        Ok(vec![dx_max?, dx_avg?])
    });
    Ok([vars[0], vars[1]])
}

/// Global average pooling, `[N, C, H, W] → [N, C]`: the mean of each plane. Backward gives every
/// element of a plane `dy / (H · W)`.
pub fn global_avg_pool(tape: &mut Tape, x: Var) -> Result<Var> {
    const OP: &str = "global_avg_pool";
    let [n, c, h, w] = nchw(tape, OP, x)?;
    let plane = h * w;
    let y = unary_to(
        tape.value(x),
        &[n, c],
        |v| k::global_avg_pool(v, plane),
        |e, b| gpu::global_avg_pool(e, b, plane),
    )?;
    Ok(tape.record(OP, y, &[x], move |dy, _| {
        let dx = unary_to(
            dy,
            &[n, c, h, w],
            |d| k::global_avg_pool_backward(d, plane),
            |e, d| gpu::global_avg_pool_backward(e, d, plane),
        )?;
        Ok(vec![Some(dx)])
    }))
}
