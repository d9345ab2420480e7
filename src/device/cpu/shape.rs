//! Shape kernels: concatenation and rectangular slices of row-major tensors. Both move contiguous
//! runs of memory, in parallel over the runs.

use std::ops::Range;

use rayon::prelude::*;

/// A rectangular window of a row-major tensor, seen as equal-length contiguous runs. The
/// dimensions after the innermost one that the window cuts are covered whole, so each run is as
/// long as it can be (a channel slice of NCHW is one run per sample).
struct Window<'a> {
    shape: &'a [usize],
    ranges: &'a [Range<usize>],
    /// The innermost dimension the window does not cover whole (0 when it covers everything).
    cut: usize,
    /// Elements per step along `cut`: `Π shape[cut+1..]`.
    inner: usize,
    /// Elements per run: `ranges[cut].len() · inner`.
    run_len: usize,
}

impl<'a> Window<'a> {
    /// The window `ranges` (one valid, non-empty range per dimension) of a tensor of `shape`.
    fn new(shape: &'a [usize], ranges: &'a [Range<usize>]) -> Window<'a> {
        let cut = (0..shape.len())
            .rev()
            .find(|&d| ranges[d].len() != shape[d])
            .unwrap_or(0);
        let inner: usize = shape[cut + 1..].iter().product();
        Window {
            shape,
            ranges,
            cut,
            inner,
            run_len: ranges[cut].len() * inner,
        }
    }

    /// The offset in the full tensor of the first element of run `r` (runs are numbered in the
    /// window's row-major order).
    fn offset(&self, mut r: usize) -> usize {
        let mut offset = self.ranges[self.cut].start * self.inner;
        let mut stride = self.inner * self.shape[self.cut];
        for d in (0..self.cut).rev() {
            let len = self.ranges[d].len();
            offset += (self.ranges[d].start + r % len) * stride;
            r /= len;
            stride *= self.shape[d];
        }
        offset
    }
}

/// The window `ranges` (one valid, non-empty range per dimension) of `x`, a tensor of `shape`,
/// copied out in row-major order.
pub fn slice(x: &[f32], shape: &[usize], ranges: &[Range<usize>]) -> Vec<f32> {
    let window = Window::new(shape, ranges);
    let mut out = vec![0.0; ranges.iter().map(|r| r.len()).product()];
    out.par_chunks_mut(window.run_len)
        .enumerate()
        .for_each(|(r, run)| {
            let start = window.offset(r);
            run.copy_from_slice(&x[start..start + window.run_len]);
        });
    out
}

/// The adjoint of [`slice`]: zeros of `shape` with `dy` (the slice's gradient) written into the
/// window `ranges`.
pub fn slice_backward(dy: &[f32], shape: &[usize], ranges: &[Range<usize>]) -> Vec<f32> {
    let window = Window::new(shape, ranges);
    let mut dx = vec![0.0; shape.iter().product()];
    if window.cut == 0 {
        // The whole window is one run.
        let start = window.offset(0);
        dx[start..start + window.run_len].copy_from_slice(dy);
        return dx;
    }
    // Threads own disjoint slabs of the first dimension; the runs of one index along it are
    // contiguous in `dy` and, counted from the slab's start, at the offsets of the first slab's.
    let slab: usize = shape[1..].iter().product();
    let first = ranges[0].start * slab;
    let dy_per_slab = dy.len() / ranges[0].len();
    dx.par_chunks_mut(slab)
        .skip(ranges[0].start)
        .zip(dy.par_chunks(dy_per_slab))
        .for_each(|(dst, src)| {
            for (r, run) in src.chunks(window.run_len).enumerate() {
                let start = window.offset(r) - first;
                dst[start..start + window.run_len].copy_from_slice(run);
            }
        });
    dx
}

/// Concatenation along one dimension: input `i` is seen as `[outer, sizes[i], inner]` and the
/// output is `[outer, Σ sizes, inner]`.
pub fn concat(xs: &[&[f32]], sizes: &[usize], outer: usize, inner: usize) -> Vec<f32> {
    let row: usize = sizes.iter().sum::<usize>() * inner;
    let mut out = vec![0.0; outer * row];
    out.par_chunks_mut(row).enumerate().for_each(|(o, dst)| {
        let mut at = 0;
        for (x, &size) in xs.iter().zip(sizes) {
            let len = size * inner;
            dst[at..at + len].copy_from_slice(&x[o * len..(o + 1) * len]);
            at += len;
        }
    });
    out
}
