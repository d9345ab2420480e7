//! Pooling on NCHW tensors: max and average pooling with a square window (DARTS' `max_pool_3x3`
//! and `avg_pool_3x3` candidates, and the auxiliary head), and global average pooling (the
//! classifier's input).

use crate::autograd::{Tape, Var};
use crate::device::cpu::pool::{self as k, PoolGeometry};
use crate::ops::nchw;
use crate::tensor::Tensor;
use crate::{Error, Result};

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
    if g.h * g.w > u32::MAX as usize {
        return Err(Error::invalid(
            OP,
            format!("a {}x{} plane is too large to index", g.h, g.w),
        ));
    }
    let in_shape = tape.shape(x).to_vec();
    let out_shape = [in_shape[0], in_shape[1], g.out_h(), g.out_w()];
    let (y, argmax) = k::max_pool2d(tape.value(x).data(), &g);
    let y = Tensor::from_vec(y, &out_shape)?;
    Ok(tape.record(OP, y, &[x], move |dy, _| {
        let dx = k::max_pool2d_backward(dy.data(), &argmax, &g);
        Ok(vec![Some(Tensor::from_vec(dx, &in_shape)?)])
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
    let y = Tensor::from_vec(k::avg_pool2d(tape.value(x).data(), &g), &out_shape)?;
    Ok(tape.record(OP, y, &[x], move |dy, _| {
        let dx = k::avg_pool2d_backward(dy.data(), &g);
        Ok(vec![Some(Tensor::from_vec(dx, &in_shape)?)])
    }))
}

/// Global average pooling, `[N, C, H, W] → [N, C]`: the mean of each plane. Backward gives every
/// element of a plane `dy / (H · W)`.
pub fn global_avg_pool(tape: &mut Tape, x: Var) -> Result<Var> {
    const OP: &str = "global_avg_pool";
    let [n, c, h, w] = nchw(tape, OP, x)?;
    let plane = h * w;
    let y = Tensor::from_vec(k::global_avg_pool(tape.value(x).data(), plane), &[n, c])?;
    Ok(tape.record(OP, y, &[x], move |dy, _| {
        let dx = k::global_avg_pool_backward(dy.data(), plane);
        Ok(vec![Some(Tensor::from_vec(dx, &[n, c, h, w])?)])
    }))
}
