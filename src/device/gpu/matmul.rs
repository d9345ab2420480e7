//! The matmul family on a GPU executor (`kernels/matmul.cu`): the strided, batched GEMM (a float
//! SIMT kernel, or a TF32 tensor-core one, by the executor's [`GemmPrecision`]) and the embedding
//! gather with its deterministic gradient. Each public function mirrors its CPU
//! reference in `device::cpu::matmul` (same arguments, same result), checks every index the
//! kernel will touch, allocates its output and launches. The convolutions (`super::conv`) reach
//! the batched GEMM through `gemm_batched`.

use std::sync::atomic::{AtomicBool, Ordering};

use super::kernels;
use super::{
    DeviceBuffer, Executor, GROUP_SLOTS, GpuError, LaunchConfig, int, invalid, slot_or_first,
};

/// Rows and columns of C one GEMM block computes (`GEMM_TILE` in `kernels/matmul.cu`).
const GEMM_TILE: usize = 64;

/// Threads per side of a GEMM block (`GEMM_THREADS_SIDE`).
const GEMM_THREADS_SIDE: u32 = 16;

/// Threads of a TF32 GEMM block: 2×2 warps (`TF32_THREADS`).
const TF32_THREADS: u32 = 128;

/// The most blocks along the y and z axes of a grid (a CUDA limit); the GEMM grid-strides beyond.
const MAX_GRID_YZ: usize = 65535;

/// Threads per block of the embedding kernels: a multiple of 32 (the gradient's scan needs whole
/// warps), at most 1024 (its shared list of matches).
const EMBEDDING_THREADS: u32 = 256;

/// Which kernel an executor's GEMMs (the dense layers and the convolutions) run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GemmPrecision {
    /// The SIMT kernel in float: each element is summed over `k` in order, so results agree with
    /// the CPU reference to rounding. The default.
    #[default]
    F32,
    /// The tensor-core kernel, on inputs rounded to TF32 (10 mantissa bits) with float sums:
    /// several times faster on sm_80 and newer, with relative errors around 1e-3. Still the same
    /// bits from run to run on one GPU, but not the CPU's.
    Tf32,
}

/// An executor's [`GemmPrecision`], changeable through a shared reference: executors are shared
/// for the life of the process, and a run chooses its precision once, at the start.
#[derive(Debug, Default)]
pub struct GemmSetting(AtomicBool);

impl GemmSetting {
    /// [`GemmPrecision::F32`].
    pub const fn new() -> GemmSetting {
        GemmSetting(AtomicBool::new(false))
    }

    /// The current choice.
    pub fn get(&self) -> GemmPrecision {
        if self.0.load(Ordering::Relaxed) {
            GemmPrecision::Tf32
        } else {
            GemmPrecision::F32
        }
    }

    /// Makes `precision` the choice.
    pub fn set(&self, precision: GemmPrecision) {
        self.0
            .store(precision == GemmPrecision::Tf32, Ordering::Relaxed);
    }
}

/// A read-only view of a logical `rows × cols` matrix in a device buffer: element `(i, j)` sits at
/// `data[i·row_stride + j·col_stride]` (plus the offset of its problem in a batch). As with the
/// CPU's `Mat`, [`DeviceMat::t`] transposes by swapping strides, so `Aᵀ·B` costs what `A·B` does.
#[derive(Debug, Clone, Copy)]
pub struct DeviceMat<'a> {
    data: &'a DeviceBuffer<f32>,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> DeviceMat<'a> {
    /// The row-major `rows × cols` matrix at the start of `data` ([`gemm`] checks that it fits).
    pub fn new(data: &'a DeviceBuffer<f32>, rows: usize, cols: usize) -> DeviceMat<'a> {
        DeviceMat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of this matrix, viewing the same data.
    pub fn t(self) -> DeviceMat<'a> {
        DeviceMat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The largest element index the matrix reaches from its start (rows and cols positive).
    fn last(&self) -> Option<usize> {
        (self.rows - 1)
            .checked_mul(self.row_stride)?
            .checked_add((self.cols - 1).checked_mul(self.col_stride)?)
    }
}

/// Where problem `(o, g)` of a batched GEMM finds one operand: `offset + o·outer + g·inner`
/// elements into its buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Start of problem (0, 0).
    pub offset: usize,
    /// Step per outer index (the image, in the convolutions).
    pub outer: usize,
    /// Step per inner index (the channel group).
    pub inner: usize,
}

impl Placement {
    /// The start of the last problem of a `[outer, inner]` batch.
    fn last(&self, [outer, inner]: [usize; 2]) -> Option<usize> {
        self.offset
            .checked_add((outer - 1).checked_mul(self.outer)?)?
            .checked_add((inner - 1).checked_mul(self.inner)?)
    }
}

/// A batch of `problems[0] × problems[1]` GEMMs of the same shape: where each finds A, B and C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Outer and inner problem counts (both positive).
    pub problems: [usize; 2],
    /// Where each problem's A starts.
    pub a: Placement,
    /// Where each problem's B starts.
    pub b: Placement,
    /// Where each problem's row-major C starts.
    pub c: Placement,
}

impl Batch {
    /// One problem, every operand at the start of its buffer.
    const SINGLE: Batch = Batch {
        problems: [1, 1],
        a: Placement {
            offset: 0,
            outer: 0,
            inner: 0,
        },
        b: Placement {
            offset: 0,
            outer: 0,
            inner: 0,
        },
        c: Placement {
            offset: 0,
            outer: 0,
            inner: 0,
        },
    };
}

/// `c ← a·b + beta·c` for `a: m × k`, `b: k × n` and the row-major `m × n` buffer `c`, on the
/// device, with the executor's [`GemmPrecision`]: each element is one fixed sequence of operations
/// over `k`, so the result has the same bits on every run. With `beta == 0` the old contents of
/// `c` are ignored (even NaN).
pub fn gemm(
    exec: &dyn Executor,
    a: DeviceMat,
    b: DeviceMat,
    beta: f32,
    c: &mut DeviceBuffer<f32>,
) -> Result<(), GpuError> {
    if c.len() != a.rows.saturating_mul(b.cols) {
        return Err(invalid(
            "gemm",
            format!(
                "the output holds {} elements, not {}×{}",
                c.len(),
                a.rows,
                b.cols
            ),
        ));
    }
    gemm_batched(exec, a, b, beta, c, &Batch::SINGLE)
}

/// The GEMM over a batch: for every problem `(o, g)`, `C(o, g) ← A(o, g)·B(o, g) + beta·C(o, g)`,
/// where the operands are `a`, `b` and a row-major `m × n` matrix placed in their buffers by
/// `batch`. Checks that every element any problem touches lies inside its buffer. Problems must
/// not share C elements (the convolutions place them side by side).
pub(crate) fn gemm_batched(
    exec: &dyn Executor,
    a: DeviceMat,
    b: DeviceMat,
    beta: f32,
    c: &mut DeviceBuffer<f32>,
    batch: &Batch,
) -> Result<(), GpuError> {
    gemm_slots(exec, vec![GemmSlot { a, b, c }], beta, batch)
}

/// One batch of problems of [`gemm_slots`]: its operands and its output buffer.
pub(crate) struct GemmSlot<'a, 'c> {
    /// A, as in [`gemm_batched`].
    pub a: DeviceMat<'a>,
    /// B.
    pub b: DeviceMat<'a>,
    /// The buffer of the row-major C matrices.
    pub c: &'c mut DeviceBuffer<f32>,
}

/// [`gemm_batched`] for several batches of one shape, each with its own buffers (`slots`: the same
/// `m`, `k`, `n` and strides, placed alike by `batch`), [`GROUP_SLOTS`] to a launch: the 1×1
/// convolutions of a DARTS search edge's candidates, stage by stage. Each batch gets the bits it
/// gets alone.
pub(crate) fn gemm_slots(
    exec: &dyn Executor,
    mut slots: Vec<GemmSlot>,
    beta: f32,
    batch: &Batch,
) -> Result<(), GpuError> {
    const OP: &str = "gemm";
    let Some(first) = slots.first() else {
        return Err(invalid(OP, "no product to compute".into()));
    };
    let shape = |a: &DeviceMat, b: &DeviceMat| {
        let strides = [a.row_stride, a.col_stride, b.row_stride, b.col_stride];
        (a.rows, a.cols, b.rows, b.cols, strides)
    };
    let first_shape = shape(&first.a, &first.b);
    let (m, k, n) = (first.a.rows, first.a.cols, first.b.cols);
    if m == 0 || k == 0 || n == 0 || first.b.rows != k {
        return Err(invalid(
            OP,
            format!("a {m}×{k} matrix times a {}×{n} one", first.b.rows),
        ));
    }
    let [outer, inner] = batch.problems;
    let problems = outer
        .checked_mul(inner)
        .filter(|&p| p > 0)
        .ok_or_else(|| invalid(OP, format!("a batch of {outer}×{inner} problems")))?;
    let reach = |mat: &DeviceMat, place: &Placement| {
        mat.last()
            .zip(place.last(batch.problems))
            .and_then(|(a, b)| a.checked_add(b))
    };
    for (s, slot) in slots.iter().enumerate() {
        if shape(&slot.a, &slot.b) != first_shape {
            return Err(invalid(
                OP,
                format!("slot {s} has another shape or layout than slot 0"),
            ));
        }
        let c_view = DeviceMat {
            data: slot.c,
            rows: m,
            cols: n,
            row_stride: n,
            col_stride: 1,
        };
        for (name, mat, place) in [
            ("A", &slot.a, &batch.a),
            ("B", &slot.b, &batch.b),
            ("C", &c_view, &batch.c),
        ] {
            let len = mat.data.len();
            // The kernel indexes inside one matrix with an `int`, and across the batch with 64
            // bits.
            let fits = mat.last().is_some_and(|last| i32::try_from(last).is_ok())
                && reach(mat, place).is_some_and(|last| last < len);
            if !fits {
                return Err(invalid(
                    OP,
                    format!(
                        "{name} of slot {s} ({}×{} placed at {place:?}) does not fit its {len} \
                         elements, or spans 2^31 or more",
                        mat.rows, mat.cols
                    ),
                ));
            }
        }
    }
    let i = |v: usize| int(OP, v);
    i(problems.saturating_mul(GROUP_SLOTS))?;
    // The two kernels take the same arguments and tile C alike; only their blocks differ.
    let (launch, block) = match exec.gemm_precision() {
        GemmPrecision::F32 => (
            kernels::matmul_gemm_fwd_f32 as GemmLauncher,
            [GEMM_THREADS_SIDE, GEMM_THREADS_SIDE, 1],
        ),
        GemmPrecision::Tf32 => (
            kernels::matmul_gemm_tf32_fwd_f32 as GemmLauncher,
            [TF32_THREADS, 1, 1],
        ),
    };
    for chunk in slots.chunks_mut(GROUP_SLOTS) {
        let count = chunk.len();
        let config = LaunchConfig {
            grid: [
                n.div_ceil(GEMM_TILE) as u32,
                m.div_ceil(GEMM_TILE).min(MAX_GRID_YZ) as u32,
                (problems * count).min(MAX_GRID_YZ) as u32,
            ],
            block,
            shared_bytes: 0,
        };
        let a = |s: usize| slot_or_first(chunk, s).a.data;
        let b = |s: usize| slot_or_first(chunk, s).b.data;
        let (a0, a1, a2, a3) = (a(0), a(1), a(2), a(3));
        let (b0, b1, b2, b3) = (b(0), b(1), b(2), b(3));
        let mut outputs = chunk.iter_mut().map(|slot| &mut *slot.c);
        let [c0, c1, c2, c3] = std::array::from_fn(|_| outputs.next());
        // SAFETY: problem (o, g) of slot s < count reads a_s[a_off + o·a_so + g·a_si + i·a_rs +
        // l·a_cs] for i < m, l < k, b_s likewise for l < k, j < n, and touches c_s[c_off + o·c_so +
        // g·c_si + i·n + j]; the largest such index of each slot's buffers was checked above to
        // lie inside them, and every value fits an int. The slots past `count` alias slot 0's
        // inputs and have null outputs; the kernel reads none of them.
        unsafe {
            launch(
                exec,
                config,
                a0,
                a1,
                a2,
                a3,
                b0,
                b1,
                b2,
                b3,
                c0,
                c1,
                c2,
                c3,
                i(count)?,
                i(m)?,
                i(n)?,
                i(k)?,
                i(first_shape.4[0])?,
                i(first_shape.4[1])?,
                i(first_shape.4[2])?,
                i(first_shape.4[3])?,
                beta,
                i(outer)?,
                i(inner)?,
                i(batch.a.offset)?,
                i(batch.a.outer)?,
                i(batch.a.inner)?,
                i(batch.b.offset)?,
                i(batch.b.outer)?,
                i(batch.b.inner)?,
                i(batch.c.offset)?,
                i(batch.c.outer)?,
                i(batch.c.inner)?,
            )
        }?;
    }
    Ok(())
}

/// The generated launcher of either GEMM kernel (they share one signature).
type GemmLauncher = unsafe fn(
    &dyn Executor,
    LaunchConfig,
    &DeviceBuffer<f32>,
    &DeviceBuffer<f32>,
    &DeviceBuffer<f32>,
    &DeviceBuffer<f32>,
    &DeviceBuffer<f32>,
    &DeviceBuffer<f32>,
    &DeviceBuffer<f32>,
    &DeviceBuffer<f32>,
    Option<&mut DeviceBuffer<f32>>,
    Option<&mut DeviceBuffer<f32>>,
    Option<&mut DeviceBuffer<f32>>,
    Option<&mut DeviceBuffer<f32>>,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
) -> Result<(), GpuError>;

/// Copies embedding ids to the device as the kernels' `int`s, checking each against `vocab`.
pub fn upload_ids(
    exec: &dyn Executor,
    ids: &[usize],
    vocab: usize,
) -> Result<DeviceBuffer<i32>, GpuError> {
    const OP: &str = "upload_ids";
    if let Some(&bad) = ids.iter().find(|&&id| id >= vocab) {
        return Err(invalid(
            OP,
            format!("id {bad} is not below the vocabulary size {vocab}"),
        ));
    }
    int(OP, vocab)?;
    let ids: Vec<i32> = ids.iter().map(|&id| id as i32).collect();
    exec.to_device(&ids)
}

/// The kernels' `rows`, `dim` and `vocab` for `rows` ids into a `[vocab, dim]` table of
/// `table_len` elements.
fn embedding_sizes(
    op: &'static str,
    table_len: usize,
    dim: usize,
    rows: usize,
) -> Result<[i32; 3], GpuError> {
    if dim == 0 || !table_len.is_multiple_of(dim) {
        return Err(invalid(
            op,
            format!("a table of {table_len} elements has no rows of {dim}"),
        ));
    }
    let out = rows
        .checked_mul(dim)
        .ok_or_else(|| invalid(op, format!("{rows} rows of {dim}")))?;
    int(op, out)?;
    Ok([int(op, rows)?, int(op, dim)?, int(op, table_len / dim)?])
}

/// Rows `ids[r]` of the row-major `[vocab, dim]` table `weight`, stacked into `[ids.len(), dim]`
/// (see [`upload_ids`]; an id outside the table, which that refuses, would give a NaN row).
pub fn gather_rows(
    exec: &dyn Executor,
    weight: &DeviceBuffer<f32>,
    dim: usize,
    ids: &DeviceBuffer<i32>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let [rows, dim_, vocab] = embedding_sizes("gather_rows", weight.len(), dim, ids.len())?;
    let len = ids.len() * dim;
    let mut out = exec.alloc(len)?;
    let config = LaunchConfig::grid_stride(len, EMBEDDING_THREADS);
    // SAFETY: the kernel reads ids[0..rows), weight[id·dim + d] only for 0 <= id < vocab and
    // d < dim (inside the vocab·dim table), and writes out[0..rows·dim); every buffer holds that.
    unsafe {
        kernels::matmul_gather_rows_fwd_f32(exec, config, weight, ids, &mut out, rows, dim_, vocab)
    }?;
    Ok(out)
}

/// The gradient of [`gather_rows`]: a `[vocab, dim]` table (`vocab` rows) holding, in row `v`, the
/// sum of the rows `r` of `dy` with `ids[r] == v`, added in `r` order without atomics, so repeated
/// ids give the same bits as the CPU reference and as every other run.
pub fn scatter_add_rows(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    dim: usize,
    ids: &DeviceBuffer<i32>,
    vocab: usize,
) -> Result<DeviceBuffer<f32>, GpuError> {
    const OP: &str = "scatter_add_rows";
    let table = vocab
        .checked_mul(dim)
        .filter(|&t| t > 0)
        .ok_or_else(|| invalid(OP, format!("a table of {vocab} rows of {dim}")))?;
    let [rows, dim_, vocab_] = embedding_sizes(OP, table, dim, ids.len())?;
    if dy.len() != ids.len() * dim {
        return Err(invalid(
            OP,
            format!(
                "dy holds {} elements, not {} rows of {dim}",
                dy.len(),
                ids.len()
            ),
        ));
    }
    int(OP, table)?;
    let mut dweight = exec.alloc(table)?;
    let config = LaunchConfig::linear(vocab_ as u32, EMBEDDING_THREADS);
    // SAFETY: the kernel reads ids[0..rows) and dy[r·dim + d] for r < rows, d < dim, and writes
    // dweight[v·dim + d] for v < vocab, d < dim; the buffers hold rows, rows·dim and vocab·dim.
    unsafe {
        kernels::matmul_scatter_add_rows_bwd_f32(
            exec,
            config,
            dy,
            ids,
            &mut dweight,
            rows,
            dim_,
            vocab_,
        )
    }?;
    Ok(dweight)
}
