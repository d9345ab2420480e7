//! The shape family on a GPU executor (`kernels/shape.cu`): fill, rectangular slices, their
//! adjoint, and concatenation, shared by CUDA and the emulator. Each function mirrors its CPU
//! reference in `device::cpu::shape` (same arguments, same result; `fill` is the zero op's
//! `Tensor::zeros`), checks the shapes and lengths, allocates its output and launches. Windows are
//! merged to at most [`WINDOW_DIMS`] dimensions before they reach a kernel (see
//! `kernels/shape.cu`).

use std::ops::Range;

use super::kernels;
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, check_len, int, invalid};

/// Threads per block: enough to hide memory latency, small enough that several blocks share an SM.
const THREADS: u32 = 256;

/// The most dimensions a window may keep after merging: the number the slice kernels take.
pub const WINDOW_DIMS: usize = 4;

/// A window of a row-major tensor as the slice kernels take it: merged to [`WINDOW_DIMS`]
/// dimensions, padded in front with length-1 ones.
struct Window {
    /// Elements in the window.
    len: usize,
    /// Elements in the whole tensor.
    full: usize,
    /// The window's lengths along merged dimensions 1, 2 and 3.
    lens: [i32; 3],
    /// The whole tensor's strides along merged dimensions 0, 1 and 2 (dimension 3's is 1).
    strides: [i32; 3],
    /// The offset of the window's first element in the whole tensor.
    base: i32,
}

impl Window {
    /// Checks `ranges` (one non-empty range inside each dimension of `shape`) and merges the
    /// window: neighbouring dimensions join when the inner one is covered whole or the outer one
    /// is one index long, until neither holds.
    fn new(op: &'static str, shape: &[usize], ranges: &[Range<usize>]) -> Result<Window, GpuError> {
        if shape.is_empty() || ranges.len() != shape.len() {
            return Err(invalid(
                op,
                format!(
                    "{} ranges for shape {shape:?}: one per dimension, at least one",
                    ranges.len()
                ),
            ));
        }
        if let Some((d, (r, n))) = ranges
            .iter()
            .zip(shape)
            .enumerate()
            .find(|(_, (r, n))| r.start >= r.end || r.end > **n)
        {
            return Err(invalid(
                op,
                format!("range {r:?} of dimension {d} is empty or outside 0..{n}"),
            ));
        }
        let full = shape
            .iter()
            .try_fold(1usize, |acc, &n| acc.checked_mul(n))
            .filter(|&full| i32::try_from(full).is_ok())
            .ok_or_else(|| invalid(op, format!("shape {shape:?} is more than a kernel indexes")))?;
        // (size, start, length) per merged dimension; every product below divides `full`.
        let mut dims: Vec<(usize, usize, usize)> = Vec::with_capacity(shape.len());
        for (&size, r) in shape.iter().zip(ranges) {
            dims.push((size, r.start, r.len()));
            while let [.., (outer, o_start, o_len), (inner, i_start, i_len)] = dims[..] {
                if o_len != 1 && i_len != inner {
                    break;
                }
                dims.truncate(dims.len() - 2);
                dims.push((
                    outer * inner,
                    o_start * inner + i_start,
                    (o_len - 1) * inner + i_len,
                ));
            }
        }
        if dims.len() > WINDOW_DIMS {
            return Err(invalid(
                op,
                format!(
                    "the window {ranges:?} of {shape:?} keeps {} dimensions after merging, the \
                     kernels take at most {WINDOW_DIMS}",
                    dims.len()
                ),
            ));
        }
        let mut padded = [(1, 0, 1); WINDOW_DIMS];
        padded[WINDOW_DIMS - dims.len()..].copy_from_slice(&dims);
        let [d0, d1, d2, d3] = padded;
        let strides = [d1.0 * d2.0 * d3.0, d2.0 * d3.0, d3.0];
        let base = d0.1 * strides[0] + d1.1 * strides[1] + d2.1 * strides[2] + d3.1;
        // Every value is at most `full`, which fits an `int`.
        Ok(Window {
            len: ranges.iter().map(|r| r.len()).product(),
            full,
            lens: [d1.2, d2.2, d3.2].map(|n| n as i32),
            strides: strides.map(|n| n as i32),
            base: base as i32,
        })
    }
}

/// Writes `src` (the window's elements, in its row-major order) into the window `w` of `dst`.
fn write_window(
    exec: &dyn Executor,
    w: &Window,
    src: &DeviceBuffer<f32>,
    dst: &mut DeviceBuffer<f32>,
) -> Result<(), GpuError> {
    let ([l1, l2, l3], [s0, s1, s2]) = (w.lens, w.strides);
    let config = LaunchConfig::grid_stride(w.len, THREADS);
    // SAFETY: the kernel reads src[0..len) and writes dst inside the window, whose offsets lie in
    // [0, full); the callers check src.len() == len and dst.len() == full.
    unsafe {
        kernels::shape_slice_bwd_f32(
            exec,
            config,
            src,
            dst,
            w.len as i32,
            l1,
            l2,
            l3,
            s0,
            s1,
            s2,
            w.base,
        )
    }
}

/// A new buffer of `len` elements all equal to `value` (the zero op, zero gradients).
pub fn fill(exec: &dyn Executor, len: usize, value: f32) -> Result<DeviceBuffer<f32>, GpuError> {
    if len == 0 {
        return Err(invalid(
            "fill",
            "a buffer holds at least one element".into(),
        ));
    }
    let n = int("fill", len)?;
    let mut y = exec.alloc(len)?;
    let config = LaunchConfig::grid_stride(len, THREADS);
    // SAFETY: the kernel writes y[0..n), and y holds n elements.
    unsafe { kernels::shape_fill_fwd_f32(exec, config, &mut y, value, n) }?;
    Ok(y)
}

/// The window `ranges` (one non-empty range per dim) of x (a tensor of `shape`), row-major.
pub fn slice(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    shape: &[usize],
    ranges: &[Range<usize>],
) -> Result<DeviceBuffer<f32>, GpuError> {
    let w = Window::new("slice", shape, ranges)?;
    check_len("slice", "x", x, w.full)?;
    let mut y = exec.alloc(w.len)?;
    let ([l1, l2, l3], [s0, s1, s2]) = (w.lens, w.strides);
    let config = LaunchConfig::grid_stride(w.len, THREADS);
    // SAFETY: the kernel writes y[0..len) and reads x inside the window, whose offsets lie in
    // [0, full); y holds len elements and x was checked to hold full.
    unsafe {
        kernels::shape_slice_fwd_f32(
            exec,
            config,
            x,
            &mut y,
            w.len as i32,
            l1,
            l2,
            l3,
            s0,
            s1,
            s2,
            w.base,
        )
    }?;
    Ok(y)
}

/// Adjoint of slice: zeros of `shape` with dy written into the window.
pub fn slice_backward(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    shape: &[usize],
    ranges: &[Range<usize>],
) -> Result<DeviceBuffer<f32>, GpuError> {
    let w = Window::new("slice_backward", shape, ranges)?;
    check_len("slice_backward", "dy", dy, w.len)?;
    let mut dx = fill(exec, w.full, 0.0)?;
    write_window(exec, &w, dy, &mut dx)?;
    Ok(dx)
}

/// Concatenation along one dimension: input i seen as [outer, sizes[i], inner], output [outer, Σ sizes, inner].
pub fn concat(
    exec: &dyn Executor,
    xs: &[&DeviceBuffer<f32>],
    sizes: &[usize],
    outer: usize,
    inner: usize,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "concat";
    if xs.is_empty() || xs.len() != sizes.len() {
        return Err(invalid(
            op,
            format!(
                "{} inputs and {} sizes: one size per input, at least one",
                xs.len(),
                sizes.len()
            ),
        ));
    }
    let total = sizes
        .iter()
        .try_fold(0usize, |acc, &s| acc.checked_add(s))
        .ok_or_else(|| invalid(op, format!("the sizes {sizes:?} overflow")))?;
    let shape = [outer, total, inner];
    // Input i fills the window [0, outer) × [start, start + sizes[i]) × [0, inner) of the output.
    let mut windows = Vec::with_capacity(xs.len());
    let mut start = 0;
    for (i, (x, &size)) in xs.iter().zip(sizes).enumerate() {
        let w = Window::new(op, &shape, &[0..outer, start..start + size, 0..inner])?;
        check_len(op, &format!("input {i}"), x, w.len)?;
        windows.push(w);
        start += size;
    }
    let mut y = exec.alloc(windows[0].full)?;
    for (x, w) in xs.iter().zip(&windows) {
        write_window(exec, w, x, &mut y)?;
    }
    Ok(y)
}
