//! Pooling kernels on NCHW data: max and average pooling with a square window, and global average
//! pooling. Every (image, channel) plane is independent, so the work runs in parallel over planes,
//! and every element is computed in a fixed order, so results are bit-identical from run to run.
//!
//! A window of a 3x3 pooling holds only nine elements, so looping inside windows is all loop
//! overhead. Instead a plane is copied into a padded scratch plane (padding −inf for max, 0 for
//! average) and reduced tap by tap: for the window offset (ky, kx) every output at once compares
//! or adds the element at that offset. Indexing outputs by their window's top-left corner in the
//! padded plane ("the grid", `q = r · padded_w + c`), the element at offset (ky, kx) of window `q`
//! is padded element `q + ky · padded_w + kx` for every `q`, so each tap is one long contiguous
//! loop that vectorises. Grid points whose window would wrap past the right edge, and (for
//! stride > 1) points between outputs, are computed and never read.

use rayon::prelude::*;

use super::CHUNK;

/// The shape of one 2-D pooling: `planes` planes of `h × w` elements, pooled by a square window of
/// side `kernel` moved by `stride`, with `padding` virtual elements on every side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Number of planes (N · C).
    pub planes: usize,
    /// Plane height.
    pub h: usize,
    /// Plane width.
    pub w: usize,
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Padding on each side.
    pub padding: usize,
}

impl PoolGeometry {
    /// Output height, `⌊(h + 2p − k) / s⌋ + 1`. The window must fit the padded plane.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Output width, `⌊(w + 2p − k) / s⌋ + 1`.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Planes handed to one rayon task: enough that a task does about [`CHUNK`] elements of work.
    fn planes_per_task(&self) -> usize {
        (CHUNK / (self.h * self.w)).max(1)
    }
}

/// Everything the kernels need to walk one plane, computed once per call.
struct Plan {
    g: PoolGeometry,
    out_h: usize,
    out_w: usize,
    /// Padded plane width and element count.
    padded_w: usize,
    padded_len: usize,
    /// Grid points that cover every output: up to the top-left corner of the last window.
    grid_len: usize,
    /// Per window offset (ky, kx) in row-major order: `ky · padded_w + kx` in the padded plane
    /// and `ky · w + kx` in the image plane.
    taps: Vec<(usize, usize)>,
    /// Per output, the number of in-image elements of its window, in output order.
    counts: Vec<f32>,
}

impl Plan {
    fn new(g: &PoolGeometry) -> Plan {
        let (k, s, p) = (g.kernel, g.stride, g.padding);
        let (out_h, out_w) = (g.out_h(), g.out_w());
        let padded_w = g.w + 2 * p;
        let taps = (0..k * k)
            .map(|t| (t / k * padded_w + t % k, t / k * g.w + t % k))
            .collect();
        // In image coordinates output o covers o·s − p .. o·s − p + k, clipped to the image.
        let span = |o: usize, size: usize| (o * s + k - p).min(size) - (o * s).saturating_sub(p);
        let counts = (0..out_h)
            .flat_map(|oy| (0..out_w).map(move |ox| (span(oy, g.h) * span(ox, g.w)) as f32))
            .collect();
        Plan {
            g: *g,
            out_h,
            out_w,
            padded_w,
            padded_len: (g.h + 2 * p) * padded_w,
            grid_len: (out_h - 1) * s * padded_w + (out_w - 1) * s + 1,
            taps,
            counts,
        }
    }

    fn out_len(&self) -> usize {
        self.out_h * self.out_w
    }

    /// The grid point of every output, in output order.
    fn grid_points(&self) -> impl Iterator<Item = usize> + '_ {
        let s = self.g.stride;
        (0..self.out_h)
            .flat_map(move |oy| (0..self.out_w).map(move |ox| (oy * self.padded_w + ox) * s))
    }

    /// The image rows of a padded plane, as (padded, image) element ranges.
    fn image_rows(&self) -> impl Iterator<Item = (std::ops::Range<usize>, std::ops::Range<usize>)> {
        let (w, p, pw) = (self.g.w, self.g.padding, self.padded_w);
        (0..self.g.h).map(move |iy| {
            let at = (iy + p) * pw + p;
            (at..at + w, iy * w..iy * w + w)
        })
    }

    /// Copies an image plane into the middle of a padded plane (whose border is left as it is).
    fn pad(&self, x: &[f32], padded: &mut [f32]) {
        for (to, from) in self.image_rows() {
            padded[to].copy_from_slice(&x[from]);
        }
    }
}

/// `if take { a } else { b }` written with bit masks: unlike a branch, this vectorises (and costs
/// no mispredictions on random data).
#[inline(always)]
fn select(take: bool, a: u32, b: u32) -> u32 {
    let mask = (take as u32).wrapping_neg();
    (a & mask) | (b & !mask)
}

/// Max pooling. Returns the output and, per output element, the offset of its maximum within its
/// input plane (`iy · w + ix`). The first maximum in row-major window order wins ties, and a NaN
/// wins over numbers (as in PyTorch). Requires `h · w ≤ u32::MAX`.
pub fn max_pool2d(x: &[f32], g: &PoolGeometry) -> (Vec<f32>, Vec<u32>) {
    let plan = Plan::new(g);
    let (plane, out_len, grid_len) = (g.h * g.w, plan.out_len(), plan.grid_len);
    let mut y = vec![0.0; g.planes * out_len];
    let mut argmax = vec![0u32; g.planes * out_len];
    // Scratch per task: the padded plane (border −inf, set once), and per grid point the best
    // value so far and the tap that holds it.
    let scratch = || {
        let padded = vec![f32::NEG_INFINITY; plan.padded_len];
        (padded, vec![0.0f32; grid_len], vec![0u32; grid_len])
    };
    y.par_chunks_mut(out_len)
        .zip(argmax.par_chunks_mut(out_len))
        .zip(x.par_chunks(plane))
        .with_min_len(g.planes_per_task())
        .for_each_init(scratch, |(padded, best, tap), ((y, argmax), x)| {
            plan.pad(x, padded);
            best.copy_from_slice(&padded[..grid_len]);
            tap.fill(0);
            for (t, &(offset, _)) in plan.taps.iter().enumerate().skip(1) {
                let values = &padded[offset..offset + grid_len];
                for ((b, a), &v) in best.iter_mut().zip(tap.iter_mut()).zip(values) {
                    let take = (v > *b) | v.is_nan();
                    *b = f32::from_bits(select(take, v.to_bits(), b.to_bits()));
                    *a = select(take, t as u32, *a);
                }
            }
            let (s, w, p, pw) = (g.stride, g.w, g.padding, plan.padded_w);
            let rows = y.chunks_mut(plan.out_w).zip(argmax.chunks_mut(plan.out_w));
            for (oy, (y, argmax)) in rows.enumerate() {
                for (ox, (y, a)) in y.iter_mut().zip(argmax.iter_mut()).enumerate() {
                    let q = (oy * pw + ox) * s;
                    *y = best[q];
                    *a = if *y == f32::NEG_INFINITY {
                        // No element beat −inf, so the winner may be padding: report the
                        // window's first in-image element, as PyTorch does.
                        ((oy * s).saturating_sub(p) * w + (ox * s).saturating_sub(p)) as u32
                    } else {
                        // The window's top-left corner is image element (oy·s − p, ox·s − p).
                        let at = oy * s * w + ox * s + plan.taps[tap[q] as usize].1;
                        (at - p * w - p) as u32
                    };
                }
            }
        });
    (y, argmax)
}

/// Max-pooling backward: each output gradient goes to the input element that was its maximum
/// (`dx[argmax[o]] += dy[o]`; overlapping windows that share a maximum add up).
pub fn max_pool2d_backward(dy: &[f32], argmax: &[u32], g: &PoolGeometry) -> Vec<f32> {
    let (plane, out_plane) = (g.h * g.w, g.out_h() * g.out_w());
    let mut dx = vec![0.0; g.planes * plane];
    dx.par_chunks_mut(plane)
        .zip(dy.par_chunks(out_plane).zip(argmax.par_chunks(out_plane)))
        .with_min_len(g.planes_per_task())
        .for_each(|(dx, (dy, argmax))| {
            for (&d, &a) in dy.iter().zip(argmax) {
                dx[a as usize] += d;
            }
        });
    dx
}

/// Average pooling that does not count padding: each output is the sum of its window's in-image
/// elements (in row-major window order; padding adds zeros) divided by their count.
pub fn avg_pool2d(x: &[f32], g: &PoolGeometry) -> Vec<f32> {
    let plan = Plan::new(g);
    let (plane, out_len, grid_len) = (g.h * g.w, plan.out_len(), plan.grid_len);
    let mut y = vec![0.0; g.planes * out_len];
    // Scratch per task: the padded plane (border 0, set once) and the sum at each grid point.
    let scratch = || (vec![0.0f32; plan.padded_len], vec![0.0f32; grid_len]);
    y.par_chunks_mut(out_len)
        .zip(x.par_chunks(plane))
        .with_min_len(g.planes_per_task())
        .for_each_init(scratch, |(padded, sum), (y, x)| {
            plan.pad(x, padded);
            sum.copy_from_slice(&padded[..grid_len]);
            for &(offset, _) in &plan.taps[1..] {
                let values = &padded[offset..offset + grid_len];
                sum.iter_mut().zip(values).for_each(|(s, &v)| *s += v);
            }
            for ((y, q), count) in y.iter_mut().zip(plan.grid_points()).zip(&plan.counts) {
                *y = sum[q] / count;
            }
        });
    y
}

/// Average-pooling backward, the transpose of the forward: each output gradient, divided by its
/// window's in-image element count, is added to every element of its window (tap by tap, so each
/// input element sums its contributions in a fixed order); the padding's share is dropped.
pub fn avg_pool2d_backward(dy: &[f32], g: &PoolGeometry) -> Vec<f32> {
    let plan = Plan::new(g);
    let (plane, out_len, grid_len) = (g.h * g.w, plan.out_len(), plan.grid_len);
    let mut dx = vec![0.0; g.planes * plane];
    // Scratch per task: the share of each grid point and the gradient of the padded plane.
    let scratch = || (vec![0.0f32; grid_len], vec![0.0f32; plan.padded_len]);
    dx.par_chunks_mut(plane)
        .zip(dy.par_chunks(out_len))
        .with_min_len(g.planes_per_task())
        .for_each_init(scratch, |(share, padded), (dx, dy)| {
            share.fill(0.0);
            for ((&d, q), count) in dy.iter().zip(plan.grid_points()).zip(&plan.counts) {
                share[q] = d / count;
            }
            padded.fill(0.0);
            for &(offset, _) in &plan.taps {
                let grads = &mut padded[offset..offset + grid_len];
                grads
                    .iter_mut()
                    .zip(share.iter())
                    .for_each(|(g, &s)| *g += s);
            }
            for (from, to) in plan.image_rows() {
                dx[to].copy_from_slice(&padded[from]);
            }
        });
    dx
}

/// Global average pooling: the mean of each plane of `plane` elements (summed in f64, in order).
pub fn global_avg_pool(x: &[f32], plane: usize) -> Vec<f32> {
    x.par_chunks(plane)
        .with_min_len((CHUNK / plane).max(1))
        .map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / plane as f64) as f32)
        .collect()
}

/// Global-average-pooling backward: every element of plane `i` gets `dy[i] / plane`.
pub fn global_avg_pool_backward(dy: &[f32], plane: usize) -> Vec<f32> {
    let mut dx = vec![0.0; dy.len() * plane];
    dx.par_chunks_mut(plane)
        .zip(dy.par_iter())
        .with_min_len((CHUNK / plane).max(1))
        .for_each(|(dx, &d)| dx.fill(d / plane as f32));
    dx
}
