//! Softmax, log-softmax and the fused cross-entropy loss, along any dimension of a contiguous
//! tensor. Sums run in f64, lane by lane in index order; the work is split over independent lanes.

use rayon::prelude::*;

/// A shape seen around one dimension as `outer × size × inner`: the `size` elements of one lane
/// (the values a softmax normalises together) sit `inner` apart, and lanes come in contiguous
/// blocks of `size · inner` elements, `inner` lanes per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lanes {
    /// The number of blocks (the product of the dimensions before `dim`).
    pub outer: usize,
    /// The length of each lane (`shape[dim]`).
    pub size: usize,
    /// The lanes per block and the distance between a lane's elements (the product of the
    /// dimensions after `dim`).
    pub inner: usize,
}

impl Lanes {
    /// The lanes of `shape` along `dim` (which must be `< shape.len()`).
    pub fn new(shape: &[usize], dim: usize) -> Lanes {
        Lanes {
            outer: shape[..dim].iter().product(),
            size: shape[dim],
            inner: shape[dim + 1..].iter().product(),
        }
    }

    /// Elements per block.
    fn block(&self) -> usize {
        self.size * self.inner
    }
}

/// `lse[i] = log Σⱼ exp(x[j·inner + i])` for each of the `inner = lse.len()` lanes of one block,
/// computed as `max + log Σ exp(x − max)` in f64 so that no exponential overflows. `sums` is
/// scratch of the same length.
fn log_sum_exp(block: &[f32], lse: &mut [f64], sums: &mut [f64]) {
    let inner = lse.len();
    lse.fill(f64::NEG_INFINITY);
    sums.fill(0.0);
    for row in block.chunks_exact(inner) {
        lse.iter_mut()
            .zip(row)
            .for_each(|(m, &v)| *m = m.max(v as f64));
    }
    for row in block.chunks_exact(inner) {
        sums.iter_mut()
            .zip(row.iter().zip(lse.iter()))
            .for_each(|(s, (&v, &m))| *s += (v as f64 - m).exp());
    }
    lse.iter_mut()
        .zip(sums.iter())
        .for_each(|(m, &s)| *m += s.ln());
}

/// `out[j, i] = f(x[j, i], lse[i])` over all blocks, in parallel, where `lse` is the log-sum-exp
/// of lane `i` of the block.
fn with_lse(x: &[f32], lanes: Lanes, f: impl Fn(f32, f64) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    let scratch = || (vec![0.0; lanes.inner], vec![0.0; lanes.inner]);
    out.par_chunks_mut(lanes.block())
        .zip(x.par_chunks(lanes.block()))
        .for_each_init(scratch, |(lse, sums), (out, x)| {
            log_sum_exp(x, lse, sums);
            for (out, x) in out
                .chunks_exact_mut(lanes.inner)
                .zip(x.chunks_exact(lanes.inner))
            {
                out.iter_mut()
                    .zip(x.iter().zip(lse.iter()))
                    .for_each(|(o, (&v, &l))| *o = f(v, l));
            }
        });
    out
}

/// `softmax(x)` along the lanes: `exp(x − logΣexp x)`.
pub fn softmax(x: &[f32], lanes: Lanes) -> Vec<f32> {
    with_lse(x, lanes, |v, lse| (v as f64 - lse).exp() as f32)
}

/// `log softmax(x)` along the lanes: `x − logΣexp x`.
pub fn log_softmax(x: &[f32], lanes: Lanes) -> Vec<f32> {
    with_lse(x, lanes, |v, lse| (v as f64 - lse) as f32)
}

/// `dx[j, i] = finish(y, dy, s[i])` with `s[i] = Σⱼ term(y, dy)` over lane `i` (in f64, in `j`
/// order): the shape shared by the softmax and log-softmax backward rules.
fn lane_backward(
    y: &[f32],
    dy: &[f32],
    lanes: Lanes,
    term: impl Fn(f32, f32) -> f64 + Sync,
    finish: impl Fn(f32, f32, f64) -> f32 + Sync,
) -> Vec<f32> {
    let mut dx = vec![0.0; y.len()];
    let inner = lanes.inner;
    dx.par_chunks_mut(lanes.block())
        .zip(
            y.par_chunks(lanes.block())
                .zip(dy.par_chunks(lanes.block())),
        )
        .for_each_init(
            || vec![0.0f64; inner],
            |s, (dx, (y, dy))| {
                s.fill(0.0);
                for (y, dy) in y.chunks_exact(inner).zip(dy.chunks_exact(inner)) {
                    s.iter_mut()
                        .zip(y.iter().zip(dy))
                        .for_each(|(s, (&y, &g))| *s += term(y, g));
                }
                for (dx, (y, dy)) in dx
                    .chunks_exact_mut(inner)
                    .zip(y.chunks_exact(inner).zip(dy.chunks_exact(inner)))
                {
                    dx.iter_mut()
                        .zip(y.iter().zip(dy).zip(s.iter()))
                        .for_each(|(d, ((&y, &g), &s))| *d = finish(y, g, s));
                }
            },
        );
    dx
}

/// The softmax backward from its output `y`: `dx = y ⊙ (dy − Σ dy⊙y)` along each lane.
pub fn softmax_backward(y: &[f32], dy: &[f32], lanes: Lanes) -> Vec<f32> {
    lane_backward(
        y,
        dy,
        lanes,
        |y, g| y as f64 * g as f64,
        |y, g, s| (y as f64 * (g as f64 - s)) as f32,
    )
}

/// The log-softmax backward from its output `y`: `dx = dy − exp(y) · Σ dy` along each lane.
pub fn log_softmax_backward(y: &[f32], dy: &[f32], lanes: Lanes) -> Vec<f32> {
    lane_backward(
        y,
        dy,
        lanes,
        |_, g| g as f64,
        |y, g, s| (g as f64 - (y as f64).exp() * s) as f32,
    )
}

/// The log-sum-exp of each row of the row-major `[rows, classes]` matrix `logits`.
pub fn row_log_sum_exp(logits: &[f32], classes: usize) -> Vec<f64> {
    logits
        .par_chunks(classes)
        .map(|row| {
            let (mut lse, mut sums) = ([0.0], [0.0]);
            log_sum_exp(row, &mut lse, &mut sums);
            lse[0]
        })
        .collect()
}

/// The mean label-smoothed cross-entropy of `logits: [rows, classes]` given each row's
/// log-sum-exp `lse` (from [`row_log_sum_exp`]). With `log pₖ = xₖ − lse` and smoothing `ε`, row
/// `i` costs `−(1−ε)·log p_t − (ε/K)·Σₖ log pₖ = lse − (1−ε)·x_t − (ε/K)·Σₖ xₖ`; the row losses
/// are summed in f64 in row order.
pub fn cross_entropy(
    logits: &[f32],
    classes: usize,
    lse: &[f64],
    targets: &[usize],
    smoothing: f32,
) -> f64 {
    let eps = smoothing as f64;
    let rows: Vec<f64> = logits
        .par_chunks(classes)
        .zip(lse.par_iter().zip(targets.par_iter()))
        .map(|(x, (&lse, &t))| {
            let total: f64 = x.iter().map(|&v| v as f64).sum();
            lse - (1.0 - eps) * x[t] as f64 - eps / classes as f64 * total
        })
        .collect();
    rows.iter().sum::<f64>() / targets.len() as f64
}

/// The cross-entropy backward: `dx[i, k] = (pᵢₖ − qᵢₖ) · scale` with `pᵢₖ = exp(xᵢₖ − lseᵢ)`
/// the softmax and `qᵢₖ = ε/K + (1−ε)·[k = tᵢ]` the smoothed target (never materialised); the
/// op passes `scale = dloss / rows`.
pub fn cross_entropy_backward(
    logits: &[f32],
    classes: usize,
    lse: &[f64],
    targets: &[usize],
    smoothing: f32,
    scale: f64,
) -> Vec<f32> {
    let eps = smoothing as f64;
    let mut dx = vec![0.0; logits.len()];
    dx.par_chunks_mut(classes)
        .zip(logits.par_chunks(classes))
        .zip(lse.par_iter().zip(targets.par_iter()))
        .for_each(|((dx, x), (&lse, &t))| {
            for (k, (d, &v)) in dx.iter_mut().zip(x).enumerate() {
                let q = eps / classes as f64 + if k == t { 1.0 - eps } else { 0.0 };
                *d = (((v as f64 - lse).exp() - q) * scale) as f32;
            }
        });
    dx
}

/// The index of the largest value in each row of the row-major `[rows, classes]` matrix `x`; the
/// first one wins a tie.
pub fn argmax_rows(x: &[f32], classes: usize) -> Vec<usize> {
    x.par_chunks(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, row[0]),
                    |best, (k, &v)| if v > best.1 { (k, v) } else { best },
                )
                .0
        })
        .collect()
}
