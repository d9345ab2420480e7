//! The pooling family on a GPU executor (`kernels/pool.cu`): max pooling with its argmax, average
//! pooling that does not count padding (either or both of the same input in one launch, as a
//! DARTS search edge pools), and global average pooling, forward and backward. Each
//! function mirrors its CPU reference in `device::cpu::pool` (same arguments, same result), checks
//! the geometry and the lengths, allocates its output and launches. The backward kernels gather
//! (each input element sums the outputs that chose it) instead of scattering with atomics, so every
//! result has the same bits on every run.

use super::kernels;
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, check_len, int, invalid};
use crate::device::cpu::pool::PoolGeometry;

/// Threads per block of the one-thread-per-element kernels.
const THREADS: u32 = 256;

/// The most threads per block of global average pooling (one block per plane).
const MAX_PLANE_THREADS: usize = 256;

/// The most blocks of global average pooling: one per plane up to this many (far more than fill
/// a GPU); the kernel loops over the planes beyond.
const MAX_PLANE_BLOCKS: usize = 65535;

/// A checked pooling geometry as the kernels take it.
struct Dims {
    planes: i32,
    h: i32,
    w: i32,
    out_h: i32,
    out_w: i32,
    kernel: i32,
    stride: i32,
    padding: i32,
    /// Elements of the input and of the output.
    in_len: usize,
    out_len: usize,
}

impl Dims {
    /// Checks `g` as the pooling ops do (positive sizes, padding at most half the window, a window
    /// that fits the padded plane) and that every size fits the kernels' `int`s.
    fn new(op: &'static str, g: &PoolGeometry) -> Result<Dims, GpuError> {
        if g.planes == 0 || g.h == 0 || g.w == 0 {
            return Err(invalid(
                op,
                format!("{} planes of {}x{} hold no elements", g.planes, g.h, g.w),
            ));
        }
        if g.kernel == 0 || g.stride == 0 {
            return Err(invalid(
                op,
                format!(
                    "kernel size {} and stride {} must be positive",
                    g.kernel, g.stride
                ),
            ));
        }
        if g.padding > g.kernel / 2 {
            return Err(invalid(
                op,
                format!(
                    "padding {} is more than half the kernel size {}",
                    g.padding, g.kernel
                ),
            ));
        }
        if g.kernel > g.h.min(g.w) + 2 * g.padding {
            return Err(invalid(
                op,
                format!(
                    "a {k}x{k} window does not fit a {}x{} plane padded by {}",
                    g.h,
                    g.w,
                    g.padding,
                    k = g.kernel
                ),
            ));
        }
        let (out_h, out_w) = (g.out_h(), g.out_w());
        let too_big = || invalid(op, "the planes hold more elements than memory".into());
        let in_len = g.planes.checked_mul(g.h * g.w).ok_or_else(too_big)?;
        let out_len = g.planes.checked_mul(out_h * out_w).ok_or_else(too_big)?;
        int(op, in_len)?;
        int(op, out_len)?;
        Ok(Dims {
            planes: int(op, g.planes)?,
            h: int(op, g.h)?,
            w: int(op, g.w)?,
            out_h: int(op, out_h)?,
            out_w: int(op, out_w)?,
            kernel: int(op, g.kernel)?,
            stride: int(op, g.stride)?,
            padding: int(op, g.padding)?,
            in_len,
            out_len,
        })
    }
}

/// The outputs of [`max_avg_pool2d`]: the max pool with its argmax, and the average pool, each
/// where asked for.
pub struct MaxAvgPools {
    /// The max pool and, per output element, the offset `iy · w + ix` of its maximum within its
    /// input plane.
    pub max: Option<(DeviceBuffer<f32>, DeviceBuffer<u32>)>,
    /// The average pool.
    pub avg: Option<DeviceBuffer<f32>>,
}

/// Max pooling and average pooling (padding not counted) of the same input through the same
/// window, those `[max, avg]` asks for, in one launch that reads each window once. As on the CPU,
/// the first maximum in row-major window order wins ties, a NaN wins over numbers, a window
/// holding nothing above −inf reports its first in-image element, and each average is the sum of
/// its window's in-image elements (in row-major window order) divided by their number.
pub fn max_avg_pool2d(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    g: &PoolGeometry,
    which: [bool; 2],
) -> Result<MaxAvgPools, GpuError> {
    pools(exec, "max_avg_pool2d", x, g, which)
}

/// [`max_avg_pool2d`] on behalf of `op`, which its errors name.
fn pools(
    exec: &dyn Executor,
    op: &'static str,
    x: &DeviceBuffer<f32>,
    g: &PoolGeometry,
    [max, avg]: [bool; 2],
) -> Result<MaxAvgPools, GpuError> {
    let d = Dims::new(op, g)?;
    check_len(op, "x", x, d.in_len)?;
    let mut out = MaxAvgPools {
        max: match max {
            true => Some((exec.alloc(d.out_len)?, exec.alloc(d.out_len)?)),
            false => None,
        },
        avg: avg.then(|| exec.alloc(d.out_len)).transpose()?,
    };
    if !(max || avg) {
        return Ok(out);
    }
    let (y_max, argmax) = match out.max.as_mut() {
        Some((y, argmax)) => (Some(y), Some(argmax)),
        None => (None, None),
    };
    let config = LaunchConfig::grid_stride(d.out_len, THREADS);
    // SAFETY: the kernel reads x[0..planes·h·w) and writes the outputs it is given at
    // [0..planes·out_h·out_w), the lengths checked above and allocated here.
    unsafe {
        kernels::pool_max_avg_fwd_f32(
            exec,
            config,
            x,
            y_max,
            argmax,
            out.avg.as_mut(),
            d.planes,
            d.h,
            d.w,
            d.out_h,
            d.out_w,
            d.kernel,
            d.stride,
            d.padding,
        )
    }?;
    Ok(out)
}

/// The output gradients of [`max_avg_pool2d_backward`]: the max pool's with the argmax its forward
/// returned, and the average pool's, each where a gradient is wanted.
pub struct MaxAvgGrads<'a> {
    /// `dy` of the max pool, and its argmax.
    pub max: Option<(&'a DeviceBuffer<f32>, &'a DeviceBuffer<u32>)>,
    /// `dy` of the average pool.
    pub avg: Option<&'a DeviceBuffer<f32>>,
}

/// The backwards of max and average pooling with the geometry `g`, those that `grads` holds, in
/// one launch: `[dx_max, dx_avg]`. Max: each input element gets the sum of the output gradients
/// whose window chose it (`dx[argmax[o]] += dy[o]`, added in output order; an offset outside its
/// output's window is ignored). Average, the transpose of its forward: each input element gets
/// `Σ dy[o] / count[o]` over the outputs `o` whose windows hold it, in the CPU's order.
pub fn max_avg_pool2d_backward(
    exec: &dyn Executor,
    grads: MaxAvgGrads,
    g: &PoolGeometry,
) -> Result<[Option<DeviceBuffer<f32>>; 2], GpuError> {
    pool_grads(exec, "max_avg_pool2d_backward", grads, g)
}

/// [`max_avg_pool2d_backward`] on behalf of `op`, which its errors name.
fn pool_grads(
    exec: &dyn Executor,
    op: &'static str,
    grads: MaxAvgGrads,
    g: &PoolGeometry,
) -> Result<[Option<DeviceBuffer<f32>>; 2], GpuError> {
    let d = Dims::new(op, g)?;
    if let Some((dy, argmax)) = grads.max {
        check_len(op, "the max pool's dy", dy, d.out_len)?;
        check_len(op, "argmax", argmax, d.out_len)?;
    }
    if let Some(dy) = grads.avg {
        check_len(op, "the average pool's dy", dy, d.out_len)?;
    }
    let mut dx_max = grads.max.map(|_| exec.alloc(d.in_len)).transpose()?;
    let mut dx_avg = grads.avg.map(|_| exec.alloc(d.in_len)).transpose()?;
    if dx_max.is_none() && dx_avg.is_none() {
        return Ok([None, None]);
    }
    let config = LaunchConfig::grid_stride(d.in_len, THREADS);
    // SAFETY: the kernel reads the gradients and the argmax it is given at
    // [0..planes·out_h·out_w) (the outputs of each input element's plane) and writes the
    // matching dx at [0..planes·h·w); the lengths are checked above and allocated here.
    unsafe {
        kernels::pool_max_avg_bwd_f32(
            exec,
            config,
            grads.max.map(|(dy, _)| dy),
            grads.max.map(|(_, argmax)| argmax),
            grads.avg,
            dx_max.as_mut(),
            dx_avg.as_mut(),
            d.planes,
            d.h,
            d.w,
            d.out_h,
            d.out_w,
            d.kernel,
            d.stride,
            d.padding,
        )
    }?;
    Ok([dx_max, dx_avg])
}

/// Max pooling alone ([`max_avg_pool2d`]): the output and its argmax.
pub fn max_pool2d(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    g: &PoolGeometry,
) -> Result<(DeviceBuffer<f32>, DeviceBuffer<u32>), GpuError> {
    let op = "max_pool2d";
    let pools = pools(exec, op, x, g, [true, false])?;
    pools.max.ok_or_else(|| invalid(op, "no output".into()))
}

/// Max-pooling backward alone ([`max_avg_pool2d_backward`]). `argmax` must come from
/// [`max_pool2d`] with the same geometry.
pub fn max_pool2d_backward(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    argmax: &DeviceBuffer<u32>,
    g: &PoolGeometry,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let grads = MaxAvgGrads {
        max: Some((dy, argmax)),
        avg: None,
    };
    let op = "max_pool2d_backward";
    let [dx, _] = pool_grads(exec, op, grads, g)?;
    dx.ok_or_else(|| invalid(op, "no gradient".into()))
}

/// Average pooling alone ([`max_avg_pool2d`]).
pub fn avg_pool2d(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    g: &PoolGeometry,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "avg_pool2d";
    let pools = pools(exec, op, x, g, [false, true])?;
    pools.avg.ok_or_else(|| invalid(op, "no output".into()))
}

/// Average-pooling backward alone ([`max_avg_pool2d_backward`]).
pub fn avg_pool2d_backward(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    g: &PoolGeometry,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let grads = MaxAvgGrads {
        max: None,
        avg: Some(dy),
    };
    let op = "avg_pool2d_backward";
    let [_, dx] = pool_grads(exec, op, grads, g)?;
    dx.ok_or_else(|| invalid(op, "no gradient".into()))
}

/// The number of planes of `plane` elements in `len` elements, checked.
fn planes_of(op: &'static str, len: usize, plane: usize) -> Result<(i32, i32), GpuError> {
    if plane == 0 || !len.is_multiple_of(plane) {
        return Err(invalid(
            op,
            format!("{len} elements are not whole planes of {plane}"),
        ));
    }
    int(op, len)?;
    Ok((int(op, len / plane)?, int(op, plane)?))
}

/// Global average pooling: the mean of each plane of `plane` elements, summed in f64 by one block
/// per plane (a fixed tree whose shape depends only on `plane`, so the bits never change).
pub fn global_avg_pool(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    plane: usize,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "global_avg_pool";
    let (planes, plane_len) = planes_of(op, x.len(), plane)?;
    let mut y = exec.alloc(planes as usize)?;
    // Enough threads for one element each, in whole warps, up to MAX_PLANE_THREADS.
    let threads = plane.next_multiple_of(32).min(MAX_PLANE_THREADS) as u32;
    let config = LaunchConfig::linear((planes as usize).min(MAX_PLANE_BLOCKS) as u32, threads);
    // SAFETY: the kernel reads x[0..planes·plane) and writes y[0..planes); x holds planes·plane
    // elements (checked) and y planes.
    unsafe { kernels::pool_global_avg_fwd_f32(exec, config, x, &mut y, planes, plane_len) }?;
    Ok(y)
}

/// Global-average-pooling backward: every element of plane `i` gets `dy[i] / plane`.
pub fn global_avg_pool_backward(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    plane: usize,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "global_avg_pool_backward";
    let len = dy
        .len()
        .checked_mul(plane)
        .ok_or_else(|| invalid(op, "the gradient would not fit in memory".into()))?;
    let (planes, plane_len) = planes_of(op, len, plane)?;
    let mut dx = exec.alloc(len)?;
    let config = LaunchConfig::grid_stride(len, THREADS);
    // SAFETY: the kernel reads dy[0..planes) and writes dx[0..planes·plane); the buffers hold
    // that many elements.
    unsafe { kernels::pool_global_avg_bwd_f32(exec, config, dy, &mut dx, planes, plane_len) }?;
    Ok(dx)
}
