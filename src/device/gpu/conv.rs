//! The conv family on a GPU executor (`kernels/conv.cu`, with the GEMM of `kernels/matmul.cu`):
//! the launch plan of a 2-D convolution, shared by CUDA and the emulator. A [`ConvPlan`] is built
//! from the same [`ConvGeometry`] the CPU reference (`device::cpu::conv`) takes, and its methods
//! compute what the reference's functions of the same names compute:
//! - depthwise (`groups == Cin == Cout`): direct kernels, forward, input gradient (a gather) and
//!   weight gradient (one block tree per channel and tap);
//! - pointwise (1×1 kernel, stride 1, padding 0): one batched GEMM per pass, on the images as
//!   they stand;
//! - everything else: im2col into a workspace, batched GEMMs over (image, group), col2im (a
//!   gather) for the input gradient, and per-image weight-gradient partials added in image order.
//!
//! The workspaces hold a chunk of images at a time, so memory stays bounded on big batches. The
//! chunk size depends only on the geometry (or on [`ConvPlan::with_images_per_chunk`]), never on
//! the device, and every reduction runs in a fixed order, so results have the same bits on every
//! run.

use super::matmul::{self, Batch, DeviceMat, Placement};
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, check_len};
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
        check_len(OP, "x", x, self.lens.x)?;
        check_len(OP, "the weight", w, self.lens.w)?;
        if let Some(b) = bias {
            check_len(OP, "the bias", b, self.g.c_out)?;
        }
        let y_len = self.lens.y;
        let (k, p) = (self.col_rows(), self.out_plane());
        let weights = DeviceMat::new(w, self.cout_g(), k);
        let mut y = match self.path {
            Path::Depthwise => depthwise::forward(exec, &[self], &[x], &[w])?.remove(0),
            Path::Pointwise => {
                let mut y = exec.alloc(y_len)?;
                let batch = self.batch(
                    self.g.batch,
                    self.weight_placement(),
                    self.input_placement(0),
                    self.output_placement(0),
                );
                let images = DeviceMat::new(x, k, p);
                matmul::gemm_batched(exec, weights, images, 0.0, &mut y, &batch)?;
                y
            }
            Path::Im2col => {
                let mut y = exec.alloc(y_len)?;
                let mut col = self.workspace(exec, self.g.c_in * self.taps() * p)?;
                for (n0, images) in self.chunks() {
                    self.im2col(exec, x, &mut col, (n0, images))?;
                    let batch = self.batch(
                        images,
                        self.weight_placement(),
                        self.column_placement(),
                        self.output_placement(n0),
                    );
                    let cols = DeviceMat::new(&col, k, p);
                    matmul::gemm_batched(exec, weights, cols, 0.0, &mut y, &batch)?;
                }
                y
            }
        };
        if let Some(b) = bias {
            let config = LaunchConfig::grid_stride(y_len, THREADS);
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
                    int(p)?,
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
        check_len(OP, "x", x, self.lens.x)?;
        check_len(OP, "the weight", w, self.lens.w)?;
        check_len(OP, "dy", dy, self.lens.y)?;
        if self.path == Path::Depthwise {
            let inputs = depthwise::BackwardInputs { x, w, dy };
            return Ok(depthwise::backward(exec, &[self], &[inputs], &[needs])?.remove(0));
        }
        let dx = match needs[0] {
            true => Some(self.backward_input(exec, w, dy)?),
            false => None,
        };
        let dw = match needs[1] {
            true => Some(self.backward_weight(exec, x, dy)?),
            false => None,
        };
        Ok([dx, dw])
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

    /// The gradient with respect to `x` on the GEMM paths (the lengths checked by
    /// [`backward`](Self::backward)).
    fn backward_input(
        &self,
        exec: &dyn Executor,
        w: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
    ) -> Result<DeviceBuffer<f32>, GpuError> {
        let x_len = self.lens.x;
        let mut dx = exec.alloc(x_len)?;
        let (k, p) = (self.col_rows(), self.out_plane());
        let weights_t = DeviceMat::new(w, self.cout_g(), k).t();
        let grads = DeviceMat::new(dy, self.cout_g(), p);
        match self.path {
            Path::Pointwise => {
                let batch = self.batch(
                    self.g.batch,
                    self.weight_placement(),
                    self.output_placement(0),
                    self.input_placement(0),
                );
                matmul::gemm_batched(exec, weights_t, grads, 0.0, &mut dx, &batch)?;
            }
            // Im2col: the depthwise path has its kernel in `depthwise_backward`.
            _ => {
                let mut dcol = self.workspace(exec, self.g.c_in * self.taps() * p)?;
                for (n0, images) in self.chunks() {
                    let batch = self.batch(
                        images,
                        self.weight_placement(),
                        self.output_placement(n0),
                        self.column_placement(),
                    );
                    matmul::gemm_batched(exec, weights_t, grads, 0.0, &mut dcol, &batch)?;
                    let len = images * self.g.c_in * self.in_plane();
                    let config = LaunchConfig::grid_stride(len, THREADS);
                    // SAFETY: the kernel writes dx inside images n0 .. n0 + images (dx holds N)
                    // and reads dcol[0..images·Cin·kh·kw·Ho·Wo) at bounds-checked output
                    // positions (dcol holds a chunk of at least `images`); sizes fit an int.
                    unsafe {
                        kernels::conv_col2im_bwd_f32(
                            exec,
                            config,
                            &dcol,
                            &mut dx,
                            int(n0)?,
                            int(images)?,
                            int(self.g.c_in)?,
                            self.window,
                        )
                    }?;
                }
            }
        }
        Ok(dx)
    }

    /// The gradient with respect to the weight on the GEMM paths (the lengths checked by
    /// [`backward`](Self::backward)): a sum over the batch in a fixed order, per-image partials
    /// added in image order, so the same bits on every run.
    fn backward_weight(
        &self,
        exec: &dyn Executor,
        x: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
    ) -> Result<DeviceBuffer<f32>, GpuError> {
        let w_len = self.lens.w;
        let mut dw = exec.alloc(w_len)?;
        let (k, p) = (self.col_rows(), self.out_plane());
        let grads = DeviceMat::new(dy, self.cout_g(), p);
        let partial = self.g.c_out * k;
        let mut partials = self.workspace(exec, partial)?;
        let mut col = match self.path {
            Path::Im2col => Some(self.workspace(exec, self.g.c_in * self.taps() * p)?),
            _ => None,
        };
        let per_image = Placement {
            offset: 0,
            outer: partial,
            inner: self.cout_g() * k,
        };
        for (chunk, (n0, images)) in self.chunks().enumerate() {
            let (columns, placement) = match col.as_mut() {
                Some(col) => {
                    self.im2col(exec, x, col, (n0, images))?;
                    (DeviceMat::new(col, k, p), self.column_placement())
                }
                None => (DeviceMat::new(x, k, p), self.input_placement(n0)),
            };
            let batch = self.batch(images, self.output_placement(n0), placement, per_image);
            matmul::gemm_batched(exec, grads, columns.t(), 0.0, &mut partials, &batch)?;
            let config = LaunchConfig::grid_stride(partial, THREADS);
            // SAFETY: the kernel reads partials[0..images·partial) (the workspace holds a chunk of
            // at least `images`) and writes dw[0..partial), partial = Cout·Cin/groups·kh·kw being
            // the length of dw; the sizes fit an int.
            unsafe {
                kernels::conv_weight_sum_bwd_f32(
                    exec,
                    config,
                    &partials,
                    &mut dw,
                    int(images)?,
                    int(partial)?,
                    i32::from(chunk > 0),
                )
            }?;
        }
        Ok(dw)
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
