//! The conv family on a GPU executor (`kernels/conv.cu`, with the GEMM of `kernels/matmul.cu`):
//! the launch plan of a 2-D convolution, shared by CUDA and the emulator. A [`ConvPlan`] is built
//! from the same [`ConvGeometry`] the CPU reference (`device::cpu::conv`) takes, and its methods
//! compute what the reference's functions of the same names compute:
//! - depthwise (`groups == Cin == Cout`): direct kernels, forward, input gradient (a gather) and
//!   weight gradient (one block tree per channel and tap), in `device::gpu::depthwise`;
//! - pointwise (1×1 kernel, stride 1, padding 0): one batched GEMM per pass, on the images as
//!   they stand;
//! - everything else: im2col into a workspace, batched GEMMs over (image, group), col2im (a
//!   gather) for the input gradient, and per-image weight-gradient partials added in image order.
//!
//! [`forward_group`] and [`backward_group`] run several convolutions of one shape together (a
//! DARTS search edge's, stage by stage): their kernels take up to [`GROUP_SLOTS`] problems of one
//! shape per launch, each with its own buffers, and give each the bits it gets alone. A single
//! convolution is a group of one.
//!
//! The workspaces hold a chunk of images at a time, so memory stays bounded on big batches. The
//! chunk size depends only on the geometry (or on [`ConvPlan::with_images_per_chunk`]), never on
//! the device, and every reduction runs in a fixed order, so results have the same bits on every
//! run.

use super::matmul::{self, Batch, DeviceMat, GemmSlot, Placement};
use super::{
    DeviceBuffer, Executor, GROUP_SLOTS, GpuError, LaunchConfig, check_len, slot_or_first,
};
use super::{depthwise, kernels};
use crate::device::cpu::conv::ConvGeometry;

/// Threads per block: a multiple of 32 (the block reductions need it).
const THREADS: u32 = 256;

/// Terms of a depthwise weight-gradient sum per thread, at least, before the block's tree.
const DEPTHWISE_TERMS_PER_THREAD: usize = 8;

/// The most floats a chunk's workspace (columns plus weight-gradient partials) may hold: 64 MiB.
const MAX_WORKSPACE: usize = 1 << 24;

const OP: &str = "conv2d";

fn invalid(message: String) -> GpuError {
    GpuError::Argument { op: OP, message }
}

/// `n` as the kernels' `int`, refusing what does not fit.
fn int(n: usize) -> Result<i32, GpuError> {
    i32::try_from(n).map_err(|_| invalid(format!("{n} is more than a kernel indexes")))
}

/// How a geometry is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// One input channel per output channel: direct kernels.
    Depthwise,
    /// A 1×1 kernel with stride 1 and no padding: the images are the column matrices.
    Pointwise,
    /// im2col into a workspace, then GEMMs.
    Im2col,
}

/// One spatial axis of a convolution, as the kernels take it (`ConvAxis` in
/// `kernels/common.cuh`, the same layout): output position `o` and kernel tap `t` read input
/// position `o·stride + t·dil − pad`, or nothing where that falls outside `[0, size)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvAxis {
    /// Input positions.
    pub size: i32,
    /// Output positions.
    pub out: i32,
    /// Kernel taps.
    pub kernel: i32,
    /// Step between the windows of neighbouring outputs.
    pub stride: i32,
    /// Zeros before the first input position.
    pub pad: i32,
    /// Step between the taps of one window.
    pub dil: i32,
}

/// The window of a 2-D convolution, a by-value kernel argument (`ConvWindow` in
/// `kernels/common.cuh`): its height axis, then its width axis.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvWindow {
    /// The height axis.
    pub y: ConvAxis,
    /// The width axis.
    pub x: ConvAxis,
}

impl ConvWindow {
    /// The window of `g`, every size checked to fit the kernels' `int`.
    pub fn new(g: &ConvGeometry) -> Result<ConvWindow, GpuError> {
        let axis = |a: usize| -> Result<ConvAxis, GpuError> {
            Ok(ConvAxis {
                size: int(g.input[a])?,
                out: int(g.output[a])?,
                kernel: int(g.kernel[a])?,
                stride: int(g.stride[a])?,
                pad: int(g.padding[a])?,
                dil: int(g.dilation[a])?,
            })
        };
        Ok(ConvWindow {
            y: axis(0)?,
            x: axis(1)?,
        })
    }
}

/// The launch plan of one convolution geometry: which kernels run, on which grids, with which
/// workspaces. Build it once per geometry and reuse it for every pass.
#[derive(Debug, Clone, Copy)]
pub struct ConvPlan {
    g: ConvGeometry,
    path: Path,
    window: ConvWindow,
    /// Elements of `x`, `y` and the weight.
    lens: Lens,
    images_per_chunk: usize,
}

/// Buffer lengths of a geometry, each checked to fit the kernels' `int`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lens {
    /// `N·Cin·H·W`.
    pub(super) x: usize,
    /// `N·Cout·Ho·Wo`.
    pub(super) y: usize,
    /// `Cout·Cin/groups·kh·kw`.
    pub(super) w: usize,
}

impl ConvPlan {
    /// Checks that `g` is consistent (positive sizes, `groups` dividing both channel counts, the
    /// output size the window admits, every buffer indexable by the kernels' `int`) and plans it,
    /// with as many images per workspace chunk as fit in 64 MiB.
    pub fn new(g: &ConvGeometry) -> Result<ConvPlan, GpuError> {
        let positive = [g.batch, g.c_in, g.c_out, g.groups]
            .iter()
            .chain(&g.input)
            .chain(&g.kernel)
            .chain(&g.stride)
            .chain(&g.dilation)
            .all(|&v| v > 0);
        if !positive || !g.c_in.is_multiple_of(g.groups) || !g.c_out.is_multiple_of(g.groups) {
            return Err(invalid(format!("inconsistent geometry {g:?}")));
        }
        let admits = |a: usize| {
            let window = g.dilation[a].checked_mul(g.kernel[a] - 1)?.checked_add(1)?;
            let padded = g.input[a].checked_add(g.padding[a].checked_mul(2)?)?;
            padded
                .checked_sub(window)
                .map(|room| room / g.stride[a] + 1)
        };
        if [admits(0), admits(1)] != [Some(g.output[0]), Some(g.output[1])] {
            return Err(invalid(format!(
                "output {:?} is not what the window admits in {g:?}",
                g.output
            )));
        }
        let path = if g.groups == g.c_in && g.groups == g.c_out {
            Path::Depthwise
        } else if g.kernel == [1, 1] && g.stride == [1, 1] && g.padding == [0, 0] {
            Path::Pointwise
        } else {
            Path::Im2col
        };
        let window = ConvWindow::new(g)?;
        let product = |first: usize, rest: [usize; 3]| {
            let len = rest.iter().try_fold(first, |acc, &v| acc.checked_mul(v));
            len.ok_or_else(|| invalid(format!("{g:?} does not fit in memory")))
                .and_then(|len| int(len).map(|_| len))
        };
        let cin_g = g.c_in / g.groups;
        let lens = Lens {
            x: product(g.batch, [g.c_in, g.input[0], g.input[1]])?,
            y: product(g.batch, [g.c_out, g.output[0], g.output[1]])?,
            w: product(g.c_out, [cin_g, g.kernel[0], g.kernel[1]])?,
        };
        let mut plan = ConvPlan {
            g: *g,
            path,
            window,
            lens,
            images_per_chunk: g.batch,
        };
        let per_image = plan.workspace_per_image().max(1);
        plan.images_per_chunk = (MAX_WORKSPACE / per_image).clamp(1, g.batch);
        product(per_image, [plan.images_per_chunk, 1, 1])?;
        Ok(plan)
    }

    /// The same plan with workspaces for `images` images at a time (clamped to `1..=batch`): a
    /// smaller chunk trades launches for memory. Results do not depend on it beyond the order in
    /// which the weight gradient adds its per-image partials.
    pub fn with_images_per_chunk(self, images: usize) -> ConvPlan {
        ConvPlan {
            images_per_chunk: images.clamp(1, self.g.batch),
            ..self
        }
    }

    /// Images per workspace chunk.
    pub fn images_per_chunk(&self) -> usize {
        self.images_per_chunk
    }

    /// The geometry this plan computes.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.g
    }

    /// Whether the plan runs the depthwise kernels (`groups == Cin == Cout`), alone or in a
    /// group of convolutions of one shape (`device::gpu::depthwise`).
    pub fn is_depthwise(&self) -> bool {
        self.path == Path::Depthwise
    }

    /// The buffer lengths of the geometry.
    pub(super) fn lens(&self) -> Lens {
        self.lens
    }

    /// The window, as the kernels take it.
    pub(super) fn window(&self) -> ConvWindow {
        self.window
    }

    /// Elements of one input plane, `H·W`.
    fn in_plane(&self) -> usize {
        self.g.input[0] * self.g.input[1]
    }

    /// Elements of one output plane, `Ho·Wo`.
    fn out_plane(&self) -> usize {
        self.g.output[0] * self.g.output[1]
    }

    /// Kernel taps, `kh·kw`.
    fn taps(&self) -> usize {
        self.g.kernel[0] * self.g.kernel[1]
    }

    /// Input channels per group.
    fn cin_g(&self) -> usize {
        self.g.c_in / self.g.groups
    }

    /// Output channels per group.
    fn cout_g(&self) -> usize {
        self.g.c_out / self.g.groups
    }

    /// Rows of a group's column matrix (and columns of its weight matrix): `Cin/groups·kh·kw`.
    fn col_rows(&self) -> usize {
        self.cin_g() * self.taps()
    }

    /// Workspace floats per image: its column matrices (im2col path) and its weight-gradient
    /// partial (GEMM paths), saturating on overflow (which `new` then refuses).
    fn workspace_per_image(&self) -> usize {
        let cols = match self.path {
            Path::Im2col => self
                .g
                .c_in
                .saturating_mul(self.taps())
                .saturating_mul(self.out_plane()),
            _ => 0,
        };
        let partial = match self.path {
            Path::Depthwise => 0,
            _ => self.g.c_out.saturating_mul(self.col_rows()),
        };
        cols.saturating_add(partial)
    }

    /// The chunks of images, `(first, count)`, in batch order.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (batch, step) = (self.g.batch, self.images_per_chunk);
        (0..batch)
            .step_by(step)
            .map(move |n0| (n0, step.min(batch - n0)))
    }

    /// The weight as one `[Cout/groups, Cin/groups·kh·kw]` matrix per group.
    fn weight_placement(&self) -> Placement {
        Placement {
            offset: 0,
            outer: 0,
            inner: self.cout_g() * self.col_rows(),
        }
    }

    /// `Cout/groups` channels of Ho·Wo per (image, group) of a `[N, Cout, Ho, Wo]` buffer, from
    /// image `n0` on.
    fn output_placement(&self, n0: usize) -> Placement {
        let p = self.out_plane();
        Placement {
            offset: n0 * self.g.c_out * p,
            outer: self.g.c_out * p,
            inner: self.cout_g() * p,
        }
    }

    /// `Cin/groups` channels of H·W per (image, group) of a `[N, Cin, H, W]` buffer: the column
    /// matrices of the pointwise path.
    fn input_placement(&self, n0: usize) -> Placement {
        let p = self.in_plane();
        Placement {
            offset: n0 * self.g.c_in * p,
            outer: self.g.c_in * p,
            inner: self.cin_g() * p,
        }
    }

    /// One `[Cin/groups·kh·kw, Ho·Wo]` column matrix per (image, group) of a chunk's workspace.
    fn column_placement(&self) -> Placement {
        let rows = self.col_rows() * self.out_plane();
        Placement {
            offset: 0,
            outer: self.g.groups * rows,
            inner: rows,
        }
    }

    /// A GEMM batch over `images` images and every group.
    fn batch(&self, images: usize, a: Placement, b: Placement, c: Placement) -> Batch {
        Batch {
            problems: [images, self.g.groups],
            a,
            b,
            c,
        }
    }

    /// A fresh workspace of `len` floats per image of a chunk.
    fn workspace(&self, exec: &dyn Executor, len: usize) -> Result<DeviceBuffer<f32>, GpuError> {
        exec.alloc(self.images_per_chunk * len)
    }

    /// Runs im2col for images `n0 .. n0 + images` of `x` into `col`.
    fn im2col(
        &self,
        exec: &dyn Executor,
        x: &DeviceBuffer<f32>,
        col: &mut DeviceBuffer<f32>,
        (n0, images): (usize, usize),
    ) -> Result<(), GpuError> {
        let len = images * self.g.c_in * self.taps() * self.out_plane();
        let config = LaunchConfig::grid_stride(len, THREADS);
        // SAFETY: the kernel writes col[0..len) (col holds a chunk of at least `images` images)
        // and reads x only inside images n0 .. n0 + images (at positions it bounds-checks against
        // H and W); x holds N ≥ n0 + images images. All sizes fit an int (checked in `new`).
        unsafe {
            kernels::conv_im2col_fwd_f32(
                exec,
                config,
                x,
                col,
                int(n0)?,
                int(images)?,
                int(self.g.c_in)?,
                self.window,
            )
        }
    }

    /// `y = conv(x, w) + bias`: `x` is `[N, Cin, H, W]`, `w` is `[Cout, Cin/groups, kh, kw]`,
    /// `bias` is `[Cout]`; returns `[N, Cout, Ho, Wo]`.
    pub fn forward(
        &self,
        exec: &dyn Executor,
        x: &DeviceBuffer<f32>,
        w: &DeviceBuffer<f32>,
        bias: Option<&DeviceBuffer<f32>>,
    ) -> Result<DeviceBuffer<f32>, GpuError> {
        if let Some(b) = bias {
            check_len(OP, "the bias", b, self.g.c_out)?;
        }
        let mut y = forward_group(exec, &[self], &[x], &[w])?.remove(0);
        if let Some(b) = bias {
            let config = LaunchConfig::grid_stride(self.lens.y, THREADS);
            // SAFETY: the kernel updates y[0..N·Cout·Ho·Wo) and reads b[0..Cout); y and b were
            // allocated and checked at those lengths.
            unsafe {
                kernels::conv_bias_fwd_f32(
                    exec,
                    config,
                    &mut y,
                    b,
                    int(self.g.batch)?,
                    int(self.g.c_out)?,
                    int(self.out_plane())?,
                )
            }?;
        }
        Ok(y)
    }

    /// The gradients of the convolution that `needs` asks for (`[input, weight]`): with respect
    /// to `x` (`[N, Cin, H, W]`) and to the weight (`[Cout, Cin/groups, kh, kw]`), from `x`, the
    /// weight `w` and the output gradient `dy` (`[N, Cout, Ho, Wo]`). On the depthwise path both
    /// come from one launch.
    pub fn backward(
        &self,
        exec: &dyn Executor,
        x: &DeviceBuffer<f32>,
        w: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        needs: [bool; 2],
    ) -> Result<[Option<DeviceBuffer<f32>>; 2], GpuError> {
        let inputs = BackwardInputs { x, w, dy };
        Ok(backward_group(exec, &[self], &[inputs], &[needs])?.remove(0))
    }

    /// Threads per block of the depthwise backward: enough whole warps for
    /// [`DEPTHWISE_TERMS_PER_THREAD`] of the `N·Ho·Wo` terms that each weight-gradient block sums,
    /// at most 256. Small images then get small blocks instead of mostly idle ones. The weight
    /// gradient's bits depend on it (through each block's tree), and it on the geometry alone.
    pub fn depthwise_backward_threads(&self) -> u32 {
        let terms = self.g.batch * self.out_plane();
        terms
            .div_ceil(DEPTHWISE_TERMS_PER_THREAD)
            .next_multiple_of(32)
            .min(THREADS as usize) as u32
    }

    /// The forwards `y_s = conv(x_s, w_s)` of this geometry on the GEMM paths, the GEMMs of all
    /// of them in one launch per chunk of images (up to [`GROUP_SLOTS`]).
    fn gemm_forward(
        &self,
        exec: &dyn Executor,
        xs: &[&DeviceBuffer<f32>],
        ws: &[&DeviceBuffer<f32>],
    ) -> Result<Vec<DeviceBuffer<f32>>, GpuError> {
        let (k, p) = (self.col_rows(), self.out_plane());
        let mut ys = allocs(exec, xs.len(), self.lens.y)?;
        let weights = |w| DeviceMat::new(w, self.cout_g(), k);
        if self.path == Path::Pointwise {
            let batch = self.batch(
                self.g.batch,
                self.weight_placement(),
                self.input_placement(0),
                self.output_placement(0),
            );
            let slots = (ws.iter().zip(xs).zip(&mut ys))
                .map(|((w, x), y)| GemmSlot {
                    a: weights(w),
                    b: DeviceMat::new(x, k, p),
                    c: y,
                })
                .collect();
            matmul::gemm_slots(exec, slots, 0.0, &batch)?;
            return Ok(ys);
        }
        let col_len = self.g.c_in * self.taps() * p;
        let mut cols = (0..xs.len())
            .map(|_| self.workspace(exec, col_len))
            .collect::<Result<Vec<_>, _>>()?;
        for (n0, images) in self.chunks() {
            for (x, col) in xs.iter().zip(&mut cols) {
                self.im2col(exec, x, col, (n0, images))?;
            }
            let batch = self.batch(
                images,
                self.weight_placement(),
                self.column_placement(),
                self.output_placement(n0),
            );
            let slots = (ws.iter().zip(&cols).zip(&mut ys))
                .map(|((w, col), y)| GemmSlot {
                    a: weights(w),
                    b: DeviceMat::new(col, k, p),
                    c: y,
                })
                .collect();
            matmul::gemm_slots(exec, slots, 0.0, &batch)?;
        }
        Ok(ys)
    }

    /// The gradients with respect to `x` of this geometry on the GEMM paths, for weights `ws`
    /// and output gradients `dys`.
    fn gemm_backward_input(
        &self,
        exec: &dyn Executor,
        ws: &[&DeviceBuffer<f32>],
        dys: &[&DeviceBuffer<f32>],
    ) -> Result<Vec<DeviceBuffer<f32>>, GpuError> {
        let mut dxs = allocs(exec, ws.len(), self.lens.x)?;
        let (k, p) = (self.col_rows(), self.out_plane());
        let weights_t = |w| DeviceMat::new(w, self.cout_g(), k).t();
        let grads = |dy| DeviceMat::new(dy, self.cout_g(), p);
        if self.path == Path::Pointwise {
            let batch = self.batch(
                self.g.batch,
                self.weight_placement(),
                self.output_placement(0),
                self.input_placement(0),
            );
            let slots = (ws.iter().zip(dys).zip(&mut dxs))
                .map(|((w, dy), dx)| GemmSlot {
                    a: weights_t(w),
                    b: grads(dy),
                    c: dx,
                })
                .collect();
            matmul::gemm_slots(exec, slots, 0.0, &batch)?;
            return Ok(dxs);
        }
        let col_len = self.g.c_in * self.taps() * p;
        let mut dcols = (0..ws.len())
            .map(|_| self.workspace(exec, col_len))
            .collect::<Result<Vec<_>, _>>()?;
        for (n0, images) in self.chunks() {
            let batch = self.batch(
                images,
                self.weight_placement(),
                self.output_placement(n0),
                self.column_placement(),
            );
            let slots = (ws.iter().zip(dys).zip(&mut dcols))
                .map(|((w, dy), dcol)| GemmSlot {
                    a: weights_t(w),
                    b: grads(dy),
                    c: dcol,
                })
                .collect();
            matmul::gemm_slots(exec, slots, 0.0, &batch)?;
            for (dcol, dx) in dcols.iter().zip(&mut dxs) {
                let len = images * self.g.c_in * self.in_plane();
                let config = LaunchConfig::grid_stride(len, THREADS);
                // SAFETY: the kernel writes dx inside images n0 .. n0 + images (dx holds N) and
                // reads dcol[0..images·Cin·kh·kw·Ho·Wo) at bounds-checked output positions (dcol
                // holds a chunk of at least `images`); sizes fit an int.
                unsafe {
                    kernels::conv_col2im_bwd_f32(
                        exec,
                        config,
                        dcol,
                        dx,
                        int(n0)?,
                        int(images)?,
                        int(self.g.c_in)?,
                        self.window,
                    )
                }?;
            }
        }
        Ok(dxs)
    }

    /// The gradients with respect to the weight of this geometry on the GEMM paths, for inputs
    /// `xs` and output gradients `dys`: sums over the batch in a fixed order, per-image partials
    /// added in image order, so the same bits on every run and in any group.
    fn gemm_backward_weight(
        &self,
        exec: &dyn Executor,
        xs: &[&DeviceBuffer<f32>],
        dys: &[&DeviceBuffer<f32>],
    ) -> Result<Vec<DeviceBuffer<f32>>, GpuError> {
        let mut dws = allocs(exec, xs.len(), self.lens.w)?;
        let (k, p) = (self.col_rows(), self.out_plane());
        let partial = self.g.c_out * k;
        let mut partials = (0..xs.len())
            .map(|_| self.workspace(exec, partial))
            .collect::<Result<Vec<_>, _>>()?;
        let mut cols = match self.path {
            Path::Im2col => (0..xs.len())
                .map(|_| self.workspace(exec, self.g.c_in * self.taps() * p))
                .collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };
        let per_image = Placement {
            offset: 0,
            outer: partial,
            inner: self.cout_g() * k,
        };
        for (chunk, (n0, images)) in self.chunks().enumerate() {
            for (x, col) in xs.iter().zip(&mut cols) {
                self.im2col(exec, x, col, (n0, images))?;
            }
            let (columns, placement): (Vec<&DeviceBuffer<f32>>, _) = match cols.is_empty() {
                true => (xs.to_vec(), self.input_placement(n0)),
                false => (cols.iter().collect(), self.column_placement()),
            };
            let batch = self.batch(images, self.output_placement(n0), placement, per_image);
            let slots = (dys.iter().zip(columns).zip(&mut partials))
                .map(|((dy, columns), partials)| GemmSlot {
                    a: DeviceMat::new(dy, self.cout_g(), p),
                    b: DeviceMat::new(columns, k, p).t(),
                    c: partials,
                })
                .collect();
            matmul::gemm_slots(exec, slots, 0.0, &batch)?;
            weight_sums(exec, &partials, &mut dws, images, partial, chunk > 0)?;
        }
        Ok(dws)
    }

    /// The gradient with respect to the bias (`[Cout]`): `Σ` over images and positions of `dy`,
    /// one fixed block tree per channel.
    pub fn backward_bias(
        &self,
        exec: &dyn Executor,
        dy: &DeviceBuffer<f32>,
    ) -> Result<DeviceBuffer<f32>, GpuError> {
        check_len(OP, "dy", dy, self.lens.y)?;
        let mut db = exec.alloc(self.g.c_out)?;
        let config = LaunchConfig::linear(int(self.g.c_out)? as u32, THREADS);
        // SAFETY: block c writes db[c] for c < Cout and reads dy[(n·Cout + c)·Ho·Wo + q] for
        // n < N, q < Ho·Wo; db holds Cout and dy was checked to hold N·Cout·Ho·Wo elements.
        unsafe {
            kernels::conv_bias_bwd_f32(
                exec,
                config,
                dy,
                &mut db,
                int(self.g.batch)?,
                int(self.g.c_out)?,
                int(self.out_plane())?,
            )
        }?;
        Ok(db)
    }
}

/// `count` fresh device buffers of `len` floats.
fn allocs(
    exec: &dyn Executor,
    count: usize,
    len: usize,
) -> Result<Vec<DeviceBuffer<f32>>, GpuError> {
    (0..count).map(|_| exec.alloc(len)).collect()
}

/// `dw_s (+)= Σ_j partials_s[j]` over the `images` per-image partials of `len` floats of each
/// slot, in image order (added onto `dw_s` when `accumulate`, the next chunk of images), up to
/// [`GROUP_SLOTS`] slots to a launch.
fn weight_sums(
    exec: &dyn Executor,
    partials: &[DeviceBuffer<f32>],
    dws: &mut [DeviceBuffer<f32>],
    images: usize,
    len: usize,
    accumulate: bool,
) -> Result<(), GpuError> {
    for (partials, dws) in partials
        .chunks(GROUP_SLOTS)
        .zip(dws.chunks_mut(GROUP_SLOTS))
    {
        let mut config = LaunchConfig::grid_stride(len, THREADS);
        config.grid[1] = partials.len() as u32;
        let p = |s: usize| slot_or_first(partials, s);
        let mut outputs = dws.iter_mut();
        let [dw0, dw1, dw2, dw3] = std::array::from_fn(|_| outputs.next());
        // SAFETY: row s < K (K = partials.len() ≤ GROUP_SLOTS) reads partials_s[0..images·len)
        // (each workspace holds a chunk of at least `images`) and writes dw_s[0..len), len =
        // Cout·Cin/groups·kh·kw being each dw's length; the slots past K alias partials 0 and
        // have null outputs, and no row reads them; the sizes fit an int.
        unsafe {
            kernels::conv_weight_sum_bwd_f32(
                exec,
                config,
                p(0),
                p(1),
                p(2),
                p(3),
                dw0,
                dw1,
                dw2,
                dw3,
                int(images)?,
                int(len)?,
                i32::from(accumulate),
            )
        }?;
    }
    Ok(())
}

/// The buffers of one convolution's backward: its input, weight and output gradient.
#[derive(Clone, Copy)]
pub struct BackwardInputs<'a> {
    /// The convolution's input, `[N, Cin, H, W]`.
    pub x: &'a DeviceBuffer<f32>,
    /// Its weight, `[Cout, Cin/groups, kh, kw]`.
    pub w: &'a DeviceBuffer<f32>,
    /// The gradient of its output, `[N, Cout, Ho, Wo]`.
    pub dy: &'a DeviceBuffer<f32>,
}

/// The first of `plans`, after checking that there is one and `count` buffers of each kind (the
/// `counts`) per plan.
pub(super) fn first_of_group<'p>(
    plans: &[&'p ConvPlan],
    counts: &[(&str, usize)],
) -> Result<&'p ConvPlan, GpuError> {
    let Some(&first) = plans.first() else {
        return Err(invalid("no convolution to run".into()));
    };
    for (what, count) in counts {
        if *count != plans.len() {
            return Err(invalid(format!(
                "{count} {what} for {} convolutions",
                plans.len()
            )));
        }
    }
    Ok(first)
}

/// Checks that `plans` is a group the GEMM paths can run: [`first_of_group`]'s checks, and all of
/// one geometry off the depthwise path.
fn check_gemm_group(plans: &[&ConvPlan], counts: &[(&str, usize)]) -> Result<(), GpuError> {
    let first = first_of_group(plans, counts)?;
    match plans.iter().position(|plan| plan.g != first.g) {
        Some(s) => Err(invalid(format!(
            "convolution {s} has another geometry than the first: {:?} and {:?}",
            plans[s].g, first.g
        ))),
        None => Ok(()),
    }
}

/// The forwards `y_s = conv_s(x_s, w_s)` (no bias) of a group of convolutions of one shape,
/// several to a launch: depthwise ones with the same sizes (their windows may differ; see
/// `device::gpu::depthwise`), or others of one geometry, whose GEMMs share launches (a DARTS
/// search edge's 1×1 convolutions, stage by stage). Each gets the bits it gets alone.
pub fn forward_group(
    exec: &dyn Executor,
    plans: &[&ConvPlan],
    xs: &[&DeviceBuffer<f32>],
    ws: &[&DeviceBuffer<f32>],
) -> Result<Vec<DeviceBuffer<f32>>, GpuError> {
    if plans.first().is_some_and(|plan| plan.is_depthwise()) {
        return depthwise::forward(exec, plans, xs, ws);
    }
    check_gemm_group(plans, &[("inputs", xs.len()), ("weights", ws.len())])?;
    let plan = plans[0];
    for (s, (x, w)) in xs.iter().zip(ws).enumerate() {
        check_len(OP, &format!("x {s}"), x, plan.lens.x)?;
        check_len(OP, &format!("the weight {s}"), w, plan.lens.w)?;
    }
    plan.gemm_forward(exec, xs, ws)
}

/// The gradients `[dx_s, dw_s]` that `needs[s]` asks for (`[input, weight]`) of a group of
/// convolutions of one shape, as [`forward_group`] groups them.
pub fn backward_group(
    exec: &dyn Executor,
    plans: &[&ConvPlan],
    inputs: &[BackwardInputs],
    needs: &[[bool; 2]],
) -> Result<Vec<[Option<DeviceBuffer<f32>>; 2]>, GpuError> {
    if plans.first().is_some_and(|plan| plan.is_depthwise()) {
        return depthwise::backward(exec, plans, inputs, needs);
    }
    let counts = [("sets of buffers", inputs.len()), ("needs", needs.len())];
    check_gemm_group(plans, &counts)?;
    let plan = plans[0];
    for (s, b) in inputs.iter().enumerate() {
        check_len(OP, &format!("x {s}"), b.x, plan.lens.x)?;
        check_len(OP, &format!("the weight {s}"), b.w, plan.lens.w)?;
        check_len(OP, &format!("dy {s}"), b.dy, plan.lens.y)?;
    }
    let wanting =
        |which: usize| -> Vec<usize> { (0..needs.len()).filter(|&s| needs[s][which]).collect() };
    let (for_dx, for_dw) = (wanting(0), wanting(1));
    let mut grads: Vec<[Option<DeviceBuffer<f32>>; 2]> =
        (0..needs.len()).map(|_| [None, None]).collect();
    if !for_dx.is_empty() {
        let ws: Vec<_> = for_dx.iter().map(|&s| inputs[s].w).collect();
        let dys: Vec<_> = for_dx.iter().map(|&s| inputs[s].dy).collect();
        for (&s, dx) in for_dx
            .iter()
            .zip(plan.gemm_backward_input(exec, &ws, &dys)?)
        {
            grads[s][0] = Some(dx);
        }
    }
    if !for_dw.is_empty() {
        let xs: Vec<_> = for_dw.iter().map(|&s| inputs[s].x).collect();
        let dys: Vec<_> = for_dw.iter().map(|&s| inputs[s].dy).collect();
        for (&s, dw) in for_dw
            .iter()
            .zip(plan.gemm_backward_weight(exec, &xs, &dys)?)
        {
            grads[s][1] = Some(dw);
        }
    }
    Ok(grads)
}
