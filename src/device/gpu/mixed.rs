//! The mixed family on a GPU executor (`kernels/mixed.cu`): the DARTS mixed op
//! `y = Σₖ wₖ · xₖ` over candidate outputs held in separate buffers, as the candidate ops write
//! them, so that nothing is stacked first (`elementwise::weighted_sum` takes them stacked as one
//! `[k, n]` buffer), with its gradients for the weights and for the candidates; and, with every
//! weight 1, the plain sum of up to eight buffers that the tape adds gradients with. Each function
//! mirrors its CPU reference (`device::cpu::elementwise::{weighted_sum, sum, scale}`,
//! `device::cpu::dot_f64`), checks lengths, allocates its output and launches.

use super::kernels;
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, int, invalid};

/// The most candidates a mixed op takes: the kernels have one pointer parameter per candidate,
/// and DARTS has eight primitives.
pub const MAX_CANDIDATES: usize = 8;

/// Threads per block: a multiple of 32 (the block reductions need it), small enough that several
/// blocks share an SM.
const THREADS: u32 = 256;

/// Elements each thread of the weight-gradient reduction sums before the block tree, at least.
/// With [`THREADS`] and [`MAX_PARTIALS`], the same as `elementwise`'s, so that both versions of
/// the op give the same bits.
const ELEMENTS_PER_THREAD: usize = 8;

/// The most partial sums per weight in the weight-gradient reduction.
const MAX_PARTIALS: usize = 256;

/// The kernels' `(k, n)` for 1 to [`MAX_CANDIDATES`] candidates of one length `n`, and `n`.
fn candidates(op: &'static str, xs: &[&DeviceBuffer<f32>]) -> Result<(i32, i32, usize), GpuError> {
    let Some(first) = xs.first() else {
        return Err(invalid(op, "no candidates".into()));
    };
    if xs.len() > MAX_CANDIDATES {
        return Err(invalid(
            op,
            format!(
                "{} candidates, more than the {MAX_CANDIDATES} the kernels take",
                xs.len()
            ),
        ));
    }
    if let Some((j, x)) = xs.iter().enumerate().find(|(_, x)| x.len() != first.len()) {
        return Err(invalid(
            op,
            format!(
                "candidate {j} has {} elements, candidate 0 has {}",
                x.len(),
                first.len()
            ),
        ));
    }
    Ok((int(op, xs.len())?, int(op, first.len())?, first.len()))
}

/// The kernels' eight candidate slots: `xs`, then `xs[0]` in the slots past `xs.len()` (never
/// read).
pub(super) fn slots<'a>(xs: &[&'a DeviceBuffer<f32>]) -> [&'a DeviceBuffer<f32>; MAX_CANDIDATES] {
    std::array::from_fn(|j| xs.get(j).copied().unwrap_or(xs[0]))
}

/// Where a mixed op's `k` weights lie: `weights[offset .. offset + k]`, a run of a larger buffer
/// (a DARTS edge's row of the architecture weights) or all of a buffer of `k`.
#[derive(Debug, Clone, Copy)]
pub struct WeightRun<'a> {
    /// The buffer holding the weights.
    pub weights: &'a DeviceBuffer<f32>,
    /// The position of the first weight.
    pub offset: usize,
}

impl WeightRun<'_> {
    /// The kernels' offset, after checking that `k` weights from it fit the buffer.
    pub(super) fn offset(&self, op: &'static str, k: usize) -> Result<i32, GpuError> {
        if self.offset + k > self.weights.len() {
            return Err(invalid(
                op,
                format!(
                    "{k} weights from position {} of a buffer of {}",
                    self.offset,
                    self.weights.len()
                ),
            ));
        }
        int(op, self.offset)
    }
}

/// The DARTS mixed op `y = Σₖ w[k] · xs[k]` over `k = xs.len()` candidates of equal length
/// (1 to [`MAX_CANDIDATES`]), with the weights `w` the run `weights`, summed in `k` order: the
/// same bits as `device::cpu::elementwise::weighted_sum`.
pub fn mixed_forward(
    exec: &dyn Executor,
    xs: &[&DeviceBuffer<f32>],
    weights: WeightRun<'_>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let op = "mixed_forward";
    let offset = weights.offset(op, xs.len())?;
    weighted(exec, op, xs, Some((weights.weights, offset)))
}

/// `y = xs[0] + xs[1] + …`, added in that order (1 to [`MAX_CANDIDATES`] buffers of equal length)
/// in one launch: the same bits as adding them two at a time, and as `device::cpu::elementwise::
/// sum`. The tape adds up gradient contributions with it.
pub fn sum(exec: &dyn Executor, xs: &[&DeviceBuffer<f32>]) -> Result<DeviceBuffer<f32>, GpuError> {
    weighted(exec, "sum", xs, None)
}

/// The launch of [`mixed_forward`] and [`sum`]: `Σₖ weights[offset + k] · xs[k]`, every weight 1
/// where there are none (`(weights, offset)`, when given, holds one per buffer from `offset`).
fn weighted(
    exec: &dyn Executor,
    op: &'static str,
    xs: &[&DeviceBuffer<f32>],
    weights: Option<(&DeviceBuffer<f32>, i32)>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let (k, n, len) = candidates(op, xs)?;
    let [x0, x1, x2, x3, x4, x5, x6, x7] = slots(xs);
    let mut y = exec.alloc(len)?;
    let config = LaunchConfig::grid_stride(len, THREADS);
    let (w, offset) = (weights.map(|(w, _)| w), weights.map_or(0, |(_, o)| o));
    // SAFETY: the kernel reads x0..x(k−1) at [0..n), weights[offset..offset + k) where given,
    // and writes y[0..n); each candidate holds n elements, the weights those k (checked by the
    // callers) and y n. Slots from k on are never read.
    unsafe {
        kernels::mixed_sum_fwd_f32(
            exec, config, x0, x1, x2, x3, x4, x5, x6, x7, w, offset, &mut y, k, n,
        )
    }?;
    Ok(y)
}

/// The mixing weights' gradient of the mixed op, `dw[k] = Σᵢ dy[i] · xs[k][i]`, summed in f64 by
/// a deterministic two-pass reduction (see `kernels/mixed.cu`): the same bits on every run and
/// every GPU, and the same as `elementwise::weighted_sum_backward_weights` on the stacked
/// candidates. The gradient has the shape of the weights' buffer: `dw` at the run's place (see
/// [`WeightRun`]), zeros elsewhere.
pub fn mixed_backward_weights(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    xs: &[&DeviceBuffer<f32>],
    weights: WeightRun<'_>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    weight_gradient(exec, "mixed_backward_weights", dy, xs, weights, None)
}

/// How the weights' gradient recomputes the batch-normalised terms of a mixed op from its inputs
/// (`batchnorm::mixed_weight_backward`): `xs[s]` normalised with the mean and `1 / σ` of row
/// `s` of `stats` (`[K, 2, C]`) where bit `s` of `norm_mask` is set, each element in channel
/// `(i / hw) % c`. Checked by the caller.
#[derive(Debug, Clone, Copy)]
pub(super) struct Normalization<'a> {
    /// The forward's statistics.
    pub stats: &'a DeviceBuffer<f32>,
    /// The normalised slots.
    pub norm_mask: u32,
    /// Channels.
    pub c: i32,
    /// Elements per channel and sample.
    pub hw: i32,
}

/// [`mixed_backward_weights`], with the terms normalised as `norm` says where given.
pub(super) fn weight_gradient(
    exec: &dyn Executor,
    op: &'static str,
    dy: &DeviceBuffer<f32>,
    xs: &[&DeviceBuffer<f32>],
    weights: WeightRun<'_>,
    norm: Option<Normalization<'_>>,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let (k, n, len) = candidates(op, xs)?;
    let offset = weights.offset(op, xs.len())?;
    let total = weights.weights.len();
    if dy.len() != len {
        return Err(invalid(
            op,
            format!("dy has {} elements, the candidates {len}", dy.len()),
        ));
    }
    // P depends on n alone, never on the device, so the order of additions does too.
    let partials = len
        .div_ceil(THREADS as usize * ELEMENTS_PER_THREAD)
        .min(MAX_PARTIALS);
    let p = int(op, partials)?;
    let mut workspace = exec.alloc(2 * partials * xs.len())?;
    let mut dw = exec.alloc(total)?;
    let pass1 = LaunchConfig {
        grid: [p as u32, k as u32, 1],
        block: [THREADS, 1, 1],
        shared_bytes: 0,
    };
    let pass2 = LaunchConfig::grid_stride(total, THREADS);
    let [x0, x1, x2, x3, x4, x5, x6, x7] = slots(xs);
    // SAFETY: pass 1 reads dy[0..n) and candidates 0..k at [0..n) (block (b, j) reads candidate
    // j < k), with `norm` the stats of its normalised slots at [0..2·k·c) (checked by the caller),
    // and writes workspace[0..2·p·k) (block (b, j) writes slots 2(j·p + b) and the next);
    // pass 2 reads those 2·p·k values and writes dw[0..total), offset + k <= total (checked).
    // Each buffer holds that many elements. Both passes run on one queue, in order.
    unsafe {
        kernels::mixed_sum_weight_partial_bwd_f32(
            exec,
            pass1,
            dy,
            x0,
            x1,
            x2,
            x3,
            x4,
            x5,
            x6,
            x7,
            norm.map(|norm| norm.stats),
            norm.map_or(0, |norm| norm.norm_mask),
            norm.map_or(1, |norm| norm.c),
            norm.map_or(1, |norm| norm.hw),
            &mut workspace,
            n,
        )?;
        kernels::elementwise_weighted_sum_weight_final_bwd_f32(
            exec,
            pass2,
            &workspace,
            &mut dw,
            p,
            k,
            offset,
            int(op, total)?,
        )?;
    }
    Ok(dw)
}

/// The candidates' input gradients `w[k]·dy` for each `k` of `picks` (each below `count`, the
/// number of candidates, at most [`MAX_CANDIDATES`]), in that order, with the weights `w` the run
/// `weights` of `count`: one launch per eight, reading `dy` once for each.
pub fn mixed_backward_inputs(
    exec: &dyn Executor,
    dy: &DeviceBuffer<f32>,
    weights: WeightRun<'_>,
    count: usize,
    picks: &[usize],
) -> Result<Vec<DeviceBuffer<f32>>, GpuError> {
    let op = "mixed_backward_inputs";
    let offset = weights.offset(op, count)?;
    if let Some(&bad) = picks.iter().find(|&&k| k >= count.min(MAX_CANDIDATES)) {
        return Err(invalid(
            op,
            format!("weight {bad} of {count} (at most {MAX_CANDIDATES})"),
        ));
    }
    let n = int(op, dy.len())?;
    let config = LaunchConfig::grid_stride(dy.len(), THREADS);
    let mut grads = Vec::with_capacity(picks.len());
    for chunk in picks.chunks(MAX_CANDIDATES) {
        let mut outputs = chunk
            .iter()
            .map(|_| exec.alloc(dy.len()))
            .collect::<Result<Vec<DeviceBuffer<f32>>, GpuError>>()?;
        // The kernel never touches the slots past `chunk.len()`; they still need distinct
        // buffers, so they get one-element ones.
        let mut unused = (chunk.len()..MAX_CANDIDATES)
            .map(|_| exec.alloc(1))
            .collect::<Result<Vec<DeviceBuffer<f32>>, GpuError>>()?;
        let mut slots = outputs.iter_mut().chain(unused.iter_mut());
        let mut slot = || slots.next().expect("eight slots");
        let [o0, o1, o2, o3, o4, o5, o6, o7] = std::array::from_fn(|_| slot());
        let picks = chunk
            .iter()
            .enumerate()
            .fold(0u32, |bits, (s, &k)| bits | (k as u32) << (3 * s));
        // SAFETY: the kernel reads w[offset + k] for the picked k (each below count, and
        // offset + count within w, checked) and dy at [0..n), and writes the first
        // `chunk.len()` outputs at [0..n); each holds n elements.
        unsafe {
            kernels::mixed_scale_bwd_f32(
                exec,
                config,
                dy,
                weights.weights,
                offset,
                o0,
                o1,
                o2,
                o3,
                o4,
                o5,
                o6,
                o7,
                picks,
                int(op, chunk.len())?,
                n,
            )
        }?;
        grads.extend(outputs);
    }
    Ok(grads)
}
