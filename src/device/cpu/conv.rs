//! 2-D convolution kernels (NCHW input, `[Cout, Cin/groups, kh, kw]` weight), forward and backward.
//!
//! Three paths share one geometry:
//! - depthwise (`groups == Cin == Cout`): direct loops over each `(n, c)` plane, in parallel, one
//!   strided axpy (or dot) per kernel tap over the whole zero-padded plane (see [`WideLayout`]);
//! - pointwise (1×1 kernel, stride 1, padding 0): the input image already is the column matrix,
//!   so each image (and group) is one GEMM `W[Cout, Cin] · X[Cin, H·W]`;
//! - everything else: im2col per image and group, then a GEMM; the input gradient goes back through
//!   the transposed GEMM and col2im.
//!
//! Along each spatial axis, output position `o` and kernel tap `k` read input position
//! `o·stride + k·dilation − padding`. im2col and col2im compute the valid output range of every tap
//! once per call (see [`Axis`]), so their inner loops run over plain slices with no per-element
//! bounds tests.
//!
//! Weight and bias gradients are sums over the batch: each image (or fixed-size chunk of images)
//! produces a partial sum in parallel, and the partials are added in index order, so the results
//! are bit-identical whatever the thread count.

use rayon::prelude::*;

use super::matmul::{Mat, gemm};

/// Images per partial weight-gradient sum on the GEMM paths. Fixed (not derived from the thread
/// count) so that the summation order, and thus the result, never changes.
const BATCH_CHUNK: usize = 4;

/// The sizes of one 2-D convolution. The kernels assume it is consistent (as built by
/// `ops::conv`): `output` is the size the window admits, `groups` divides both channel counts and
/// strides, dilations and sizes are non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Output height and width.
    pub output: [usize; 2],
    /// Step between windows, per axis.
    pub stride: [usize; 2],
    /// Implicit zeros on each side, per axis.
    pub padding: [usize; 2],
    /// Spacing between kernel taps, per axis.
    pub dilation: [usize; 2],
    /// Channel groups: output channel block `g` sees only input channel block `g`.
    pub groups: usize,
}

impl ConvGeometry {
    /// Input channels per group.
    fn cin_g(&self) -> usize {
        self.c_in / self.groups
    }

    /// Output channels per group.
    fn cout_g(&self) -> usize {
        self.c_out / self.groups
    }

    /// Elements of one input plane.
    fn in_plane(&self) -> usize {
        self.input[0] * self.input[1]
    }

    /// Elements of one output plane.
    fn out_plane(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// Kernel taps per plane.
    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// Rows of a group's column matrix: `Cin/groups · kh · kw`.
    fn col_rows(&self) -> usize {
        self.cin_g() * self.taps()
    }

    /// Whether each output channel sees exactly its own input channel.
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.c_in && self.groups == self.c_out
    }

    /// Whether im2col is the identity (1×1 kernel, stride 1, padding 0): the input plane block of
    /// a group is its column matrix as it stands.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// The height and width axes.
    fn axes(&self) -> [Axis; 2] {
        [0, 1].map(|a| {
            Axis::new(
                self.input[a],
                self.output[a],
                self.kernel[a],
                self.stride[a],
                self.padding[a],
                self.dilation[a],
            )
        })
    }
}

/// One spatial axis of a convolution (for im2col and col2im), with the valid output range of each
/// kernel tap.
struct Axis {
    stride: usize,
    dilation: usize,
    padding: usize,
    /// For tap `k`: the output positions `lo..hi` whose input position lies inside the image.
    taps: Vec<(usize, usize)>,
}

impl Axis {
    /// The axis of an `input`-long dimension read by `output` windows of `kernel` taps.
    fn new(
        input: usize,
        output: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Axis {
        let taps = (0..kernel)
            .map(|k| {
                // Solve 0 <= o·stride + k·dilation − padding <= input − 1 for o.
                let offset = k * dilation;
                let lo = padding.saturating_sub(offset).div_ceil(stride);
                let hi = if input + padding > offset {
                    ((input + padding - offset - 1) / stride + 1).min(output)
                } else {
                    0
                };
                (lo.min(hi), hi)
            })
            .collect();
        Axis {
            stride,
            dilation,
            padding,
            taps,
        }
    }

    /// The input position read by output `o` through tap `k` (for `o` in the tap's valid range).
    fn input_index(&self, o: usize, k: usize) -> usize {
        o * self.stride + k * self.dilation - self.padding
    }

    /// Whether output `o` through tap `k` lands inside the image.
    fn covers(&self, o: usize, k: usize) -> bool {
        let (lo, hi) = self.taps[k];
        (lo..hi).contains(&o)
    }
}

/// `dst[i] += alpha · src[start + i·stride]`.
fn axpy_strided(alpha: f32, src: &[f32], start: usize, stride: usize, dst: &mut [f32]) {
    if stride == 1 {
        let src = &src[start..start + dst.len()];
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d += alpha * s);
    } else {
        let src = src[start..].iter().step_by(stride);
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d += alpha * s);
    }
}

/// `dst[start + i·stride] += alpha · src[i]`.
fn scatter_strided(alpha: f32, src: &[f32], dst: &mut [f32], start: usize, stride: usize) {
    if stride == 1 {
        let dst = &mut dst[start..start + src.len()];
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d += alpha * s);
    } else {
        let dst = dst[start..].iter_mut().step_by(stride);
        dst.zip(src).for_each(|(d, &s)| *d += alpha * s);
    }
}

/// `Σᵢ a[i] · b[start + i·stride]`, in a fixed order (eight interleaved partial sums when
/// contiguous, so the loop vectorises).
fn dot_strided(a: &[f32], b: &[f32], start: usize, stride: usize) -> f32 {
    if stride == 1 {
        let b = &b[start..start + a.len()];
        let mut lanes = [0.0f32; 8];
        let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = a8
            .remainder()
            .iter()
            .zip(b8.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in a8.zip(b8) {
            for ((l, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
                *l += x * y;
            }
        }
        lanes.iter().sum::<f32>() + tail
    } else {
        a.iter()
            .zip(b[start..].iter().step_by(stride))
            .map(|(x, y)| x * y)
            .sum()
    }
}

/// Sums `partials`, laid out as `[count, len]`, over the first axis in index order.
fn sum_partials(partials: &[f32], len: usize) -> Vec<f32> {
    let mut chunks = partials.chunks_exact(len);
    let mut out = chunks.next().map_or_else(Vec::new, <[f32]>::to_vec);
    for p in chunks {
        out.iter_mut().zip(p).for_each(|(o, &v)| *o += v);
    }
    out
}

/// Copies the `Cin/groups` channels in `x` into the column matrix `col`
/// (`[Cin/groups · kh · kw, Ho · Wo]`, row `(c·kh + ky)·kw + kx`), zeros where the window is off
/// the image.
fn im2col(g: &ConvGeometry, [ay, ax]: &[Axis; 2], x: &[f32], col: &mut [f32]) {
    let ([kh, kw], [_, w], [_, wo]) = (g.kernel, g.input, g.output);
    let rows = col.chunks_exact_mut(g.out_plane());
    for (r, col_row) in rows.enumerate() {
        let (c, ky, kx) = (r / (kh * kw), r / kw % kh, r % kw);
        let plane = &x[c * g.in_plane()..][..g.in_plane()];
        let (lo, hi) = ax.taps[kx];
        for (oy, dst) in col_row.chunks_exact_mut(wo).enumerate() {
            dst.fill(0.0);
            if ay.covers(oy, ky) && lo < hi {
                let in_row = &plane[ay.input_index(oy, ky) * w..][..w];
                axpy_strided(
                    1.0,
                    in_row,
                    ax.input_index(lo, kx),
                    ax.stride,
                    &mut dst[lo..hi],
                );
            }
        }
    }
}

/// Adds the column matrix `col` back onto the `Cin/groups` channels in `dx`: the adjoint of
/// [`im2col`].
fn col2im(g: &ConvGeometry, [ay, ax]: &[Axis; 2], col: &[f32], dx: &mut [f32]) {
    let ([kh, kw], [_, w], [_, wo]) = (g.kernel, g.input, g.output);
    for (r, col_row) in col.chunks_exact(g.out_plane()).enumerate() {
        let (c, ky, kx) = (r / (kh * kw), r / kw % kh, r % kw);
        let plane = &mut dx[c * g.in_plane()..][..g.in_plane()];
        let (lo, hi) = ax.taps[kx];
        if lo >= hi {
            continue;
        }
        for (oy, src) in col_row.chunks_exact(wo).enumerate() {
            if ay.covers(oy, ky) {
                let in_row = &mut plane[ay.input_index(oy, ky) * w..][..w];
                scatter_strided(1.0, &src[lo..hi], in_row, ax.input_index(lo, kx), ax.stride);
            }
        }
    }
}

/// The column matrix of group `group` of one image `x_img`: the input channels themselves on the
/// pointwise path, else im2col into `buf`.
fn columns<'a>(
    g: &ConvGeometry,
    axes: &[Axis; 2],
    x_img: &'a [f32],
    group: usize,
    buf: &'a mut [f32],
) -> &'a [f32] {
    let x = &x_img[group * g.cin_g() * g.in_plane()..][..g.cin_g() * g.in_plane()];
    if g.is_pointwise() {
        x
    } else {
        im2col(g, axes, x, buf);
        buf
    }
}

/// A column-matrix scratch buffer, empty on the pointwise path (which needs none).
fn col_buffer(g: &ConvGeometry) -> Vec<f32> {
    if g.is_pointwise() {
        Vec::new()
    } else {
        vec![0.0; g.col_rows() * g.out_plane()]
    }
}

/// Copies a `rows × cols` block between two row-major layouts: row `r` of the block starts at
/// `src[r·src_stride]` and `dst[r·dst_stride]`.
fn copy_block(
    src: &[f32],
    src_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
    [rows, cols]: [usize; 2],
) {
    let src_rows = src.chunks(src_stride);
    for (s, d) in src_rows.zip(dst.chunks_mut(dst_stride)).take(rows) {
        d[..cols].copy_from_slice(&s[..cols]);
    }
}

/// The layout of the depthwise path, which turns every kernel tap into one strided axpy (or dot)
/// over a whole plane.
///
/// The input plane is copied into a zero-bordered buffer of `rows × cols` (the image at
/// `(padding[0], padding[1])`; `cols` is rounded up to a multiple of the width stride). The output
/// is computed on "wide" rows of `wide_cols = stride_h · cols / stride_w` entries, of which only the
/// first `Wo` are real. Wide output `j = oy·wide_cols + ox` then reads padded position
/// `(oy·stride_h + ky·dil_h)·cols + ox·stride_w + kx·dil_w = j·stride_w + offset(ky, kx)`, always
/// inside the buffer, so no tap needs a bounds test. The extra columns cost
/// `(wide_cols − Wo) / Wo` more work and are dropped (forward) or held at zero (backward).
struct WideLayout {
    /// Padded rows and columns.
    padded: [usize; 2],
    /// Entries per wide output row.
    wide_cols: usize,
    /// Wide output entries up to the last real one: `(Ho − 1)·wide_cols + Wo`.
    wide_len: usize,
    /// Stride along the width: the step through the padded plane per wide output.
    stride: usize,
    /// The padded-plane offset of each tap, in weight order (`ky·kw + kx`).
    offsets: Vec<usize>,
}

impl WideLayout {
    /// The layout for a depthwise geometry.
    fn new(g: &ConvGeometry) -> WideLayout {
        let ([h, w], [ho, wo], [kh, kw]) = (g.input, g.output, g.kernel);
        let ([sy, sx], [py, px], [dy, dx]) = (g.stride, g.padding, g.dilation);
        let cols = (w + 2 * px).next_multiple_of(sx);
        let wide_cols = sy * cols / sx;
        let offsets = (0..kh * kw)
            .map(|t| t / kw * dy * cols + t % kw * dx)
            .collect();
        WideLayout {
            padded: [h + 2 * py, cols],
            wide_cols,
            wide_len: (ho - 1) * wide_cols + wo,
            stride: sx,
            offsets,
        }
    }

    /// Zeroed buffers for one task: a padded plane and a wide output plane.
    fn scratch(&self) -> (Vec<f32>, Vec<f32>) {
        (
            vec![0.0; self.padded[0] * self.padded[1]],
            vec![0.0; self.wide_len],
        )
    }

    /// Where the image starts inside the padded plane.
    fn origin(&self, g: &ConvGeometry) -> usize {
        g.padding[0] * self.padded[1] + g.padding[1]
    }

    /// Copies an input plane into the interior of `padded` (whose border stays zero).
    fn pad(&self, g: &ConvGeometry, plane: &[f32], padded: &mut [f32]) {
        let dst = &mut padded[self.origin(g)..];
        copy_block(plane, g.input[1], dst, self.padded[1], g.input);
    }

    /// Copies the interior of `padded` out to an input-sized plane.
    fn unpad(&self, g: &ConvGeometry, padded: &[f32], plane: &mut [f32]) {
        let src = &padded[self.origin(g)..];
        copy_block(src, self.padded[1], plane, g.input[1], g.input);
    }

    /// Copies an output plane into `wide`, with zeros in the extra columns.
    fn widen(&self, g: &ConvGeometry, plane: &[f32], wide: &mut [f32]) {
        wide.fill(0.0);
        copy_block(plane, g.output[1], wide, self.wide_cols, g.output);
    }

    /// Copies the real columns of `wide` out to an output plane.
    fn narrow(&self, g: &ConvGeometry, wide: &[f32], plane: &mut [f32]) {
        copy_block(wide, self.wide_cols, plane, g.output[1], g.output);
    }
}

/// The convolution `y = conv(x, w) + b`: `x` is `[N, Cin, H, W]`, `w` is `[Cout, Cin/groups, kh,
/// kw]`, `bias` is `[Cout]`; returns `[N, Cout, Ho, Wo]`.
pub fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![0.0; g.batch * g.c_out * g.out_plane()];
    if g.is_depthwise() {
        let layout = WideLayout::new(g);
        let taps = g.taps();
        y.par_chunks_mut(g.out_plane())
            .zip(x.par_chunks(g.in_plane()))
            .enumerate()
            .for_each_init(
                || layout.scratch(),
                |(padded, wide), (nc, (y, x))| {
                    let wc = &w[nc % g.c_in * taps..][..taps];
                    layout.pad(g, x, padded);
                    wide.fill(0.0);
                    for (&wt, &offset) in wc.iter().zip(&layout.offsets) {
                        axpy_strided(wt, padded, offset, layout.stride, wide);
                    }
                    layout.narrow(g, wide, y);
                },
            );
    } else {
        let axes = g.axes();
        let (k, p) = (g.col_rows(), g.out_plane());
        let y_img = g.c_out * p;
        y.par_chunks_mut(y_img).enumerate().for_each_init(
            || col_buffer(g),
            |buf, (n, y)| {
                let x_img = &x[n * g.c_in * g.in_plane()..][..g.c_in * g.in_plane()];
                for group in 0..g.groups {
                    let cols = columns(g, &axes, x_img, group, buf);
                    let w_g = &w[group * g.cout_g() * k..][..g.cout_g() * k];
                    let y_g = &mut y[group * g.cout_g() * p..][..g.cout_g() * p];
                    gemm(Mat::new(w_g, g.cout_g(), k), Mat::new(cols, k, p), 0.0, y_g);
                }
            },
        );
    }
    if let Some(b) = bias {
        y.par_chunks_mut(g.out_plane())
            .enumerate()
            .for_each(|(nc, plane)| plane.iter_mut().for_each(|v| *v += b[nc % g.c_out]));
    }
    y
}

/// The gradient with respect to `x`: `dx = convᵀ(dy, w)`, i.e. every output gradient sent back,
/// scaled by its tap's weight, to the input position that tap read.
pub fn backward_input(g: &ConvGeometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; g.batch * g.c_in * g.in_plane()];
    if g.is_depthwise() {
        let layout = WideLayout::new(g);
        let taps = g.taps();
        dx.par_chunks_mut(g.in_plane())
            .zip(dy.par_chunks(g.out_plane()))
            .enumerate()
            .for_each_init(
                || layout.scratch(),
                |(padded, wide), (nc, (dx, dy))| {
                    let wc = &w[nc % g.c_in * taps..][..taps];
                    layout.widen(g, dy, wide);
                    padded.fill(0.0);
                    for (&wt, &offset) in wc.iter().zip(&layout.offsets) {
                        scatter_strided(wt, wide, padded, offset, layout.stride);
                    }
                    layout.unpad(g, padded, dx);
                },
            );
    } else {
        let axes = g.axes();
        let (k, p) = (g.col_rows(), g.out_plane());
        let dx_img = g.c_in * g.in_plane();
        dx.par_chunks_mut(dx_img).enumerate().for_each_init(
            || col_buffer(g),
            |buf, (n, dx)| {
                let dy_img = &dy[n * g.c_out * p..][..g.c_out * p];
                for group in 0..g.groups {
                    let w_g = Mat::new(
                        &w[group * g.cout_g() * k..][..g.cout_g() * k],
                        g.cout_g(),
                        k,
                    );
                    let dy_g = Mat::new(
                        &dy_img[group * g.cout_g() * p..][..g.cout_g() * p],
                        g.cout_g(),
                        p,
                    );
                    let dx_g =
                        &mut dx[group * g.cin_g() * g.in_plane()..][..g.cin_g() * g.in_plane()];
                    if g.is_pointwise() {
                        gemm(w_g.t(), dy_g, 0.0, dx_g);
                    } else {
                        gemm(w_g.t(), dy_g, 0.0, buf);
                        col2im(g, &axes, buf, dx_g);
                    }
                }
            },
        );
    }
    dx
}

/// The gradient with respect to `w`: `dw[o, c, ky, kx] = Σₙ Σ_{oy,ox} dy[n, o, oy, ox] ·
/// x[n, c', iy, ix]` over the positions each tap read; per-image (depthwise) or per-chunk (GEMM)
/// partials are added in batch order.
pub fn backward_weight(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if g.is_depthwise() {
        let layout = WideLayout::new(g);
        let taps = g.taps();
        // Partial sums per (n, c) plane: [N, C, kh·kw], then summed over n.
        let mut partials = vec![0.0; g.batch * g.c_in * taps];
        partials
            .par_chunks_mut(taps)
            .zip(dy.par_chunks(g.out_plane()).zip(x.par_chunks(g.in_plane())))
            .for_each_init(
                || layout.scratch(),
                |(padded, wide), (acc, (dy, x))| {
                    layout.pad(g, x, padded);
                    layout.widen(g, dy, wide);
                    for (a, &offset) in acc.iter_mut().zip(&layout.offsets) {
                        *a = dot_strided(wide, padded, offset, layout.stride);
                    }
                },
            );
        return sum_partials(&partials, g.c_in * taps);
    }
    let axes = g.axes();
    let (k, p) = (g.col_rows(), g.out_plane());
    let w_len = g.c_out * k;
    let chunks = g.batch.div_ceil(BATCH_CHUNK);
    let mut partials = vec![0.0; chunks * w_len];
    partials.par_chunks_mut(w_len).enumerate().for_each_init(
        || col_buffer(g),
        |buf, (chunk, dw)| {
            let images = chunk * BATCH_CHUNK..((chunk + 1) * BATCH_CHUNK).min(g.batch);
            for n in images {
                let x_img = &x[n * g.c_in * g.in_plane()..][..g.c_in * g.in_plane()];
                let dy_img = &dy[n * g.c_out * p..][..g.c_out * p];
                for group in 0..g.groups {
                    let cols = columns(g, &axes, x_img, group, buf);
                    let dy_g = Mat::new(
                        &dy_img[group * g.cout_g() * p..][..g.cout_g() * p],
                        g.cout_g(),
                        p,
                    );
                    let dw_g = &mut dw[group * g.cout_g() * k..][..g.cout_g() * k];
                    gemm(dy_g, Mat::new(cols, k, p).t(), 1.0, dw_g);
                }
            }
        },
    );
    sum_partials(&partials, w_len)
}

/// The gradient with respect to the bias: `db[o] = Σₙ Σ_{oy,ox} dy[n, o, oy, ox]`, per-plane sums
/// added in batch order.
pub fn backward_bias(g: &ConvGeometry, dy: &[f32]) -> Vec<f32> {
    let plane_sums: Vec<f32> = dy
        .par_chunks(g.out_plane())
        .map(|plane| plane.iter().sum())
        .collect();
    sum_partials(&plane_sums, g.c_out)
}
