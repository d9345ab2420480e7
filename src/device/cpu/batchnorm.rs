//! Batch-norm kernels on data laid out as `[N, C, HW]` (NCHW images, or `[N, C]` with `HW = 1`).
//! Per-channel reductions run in parallel over channels, each channel summed in f64 in a fixed
//! order (image by image, element by element), so statistics are bit-identical from run to run.
//! Elementwise passes run in parallel over the `HW`-element planes.

use rayon::prelude::*;

use super::CHUNK;
use super::elementwise::relu_scalar;

/// How batch norm sees its input: `n` samples of `c` channels of `hw` elements each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Elements per channel per sample (H · W).
    pub hw: usize,
}

impl ChannelLayout {
    /// Elements averaged over per channel, `n · hw`.
    pub fn per_channel(&self) -> usize {
        self.n * self.hw
    }

    /// The `hw`-element planes of channel `ch`, sample by sample.
    fn planes<'a>(&self, x: &'a [f32], ch: usize) -> impl Iterator<Item = &'a [f32]> {
        let (c, hw) = (self.c, self.hw);
        (0..self.n).map(move |s| &x[(s * c + ch) * hw..][..hw])
    }

    /// Runs `f(channel)` for every channel in parallel and collects the results in channel order.
    fn per_channel_map<T: Send>(&self, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
        (0..self.c).into_par_iter().map(f).collect()
    }

    /// Planes handed to one rayon task in elementwise passes.
    fn planes_per_task(&self) -> usize {
        (CHUNK / self.hw).max(1)
    }
}

/// What a batch norm applies to its normalised output before handing it on. DARTS' separable
/// convolutions follow a batch norm with a ReLU; applied inside the batch norm, the pair makes one
/// pass over the data, and its backward keeps one tensor instead of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The normalised output as it is.
    Identity,
    /// ReLU of it, NaN kept ([`relu_scalar`]).
    Relu,
}

impl Activation {
    /// The activation of one normalised value.
    pub fn apply(self, y: f32) -> f32 {
        match self {
            Activation::Identity => y,
            Activation::Relu => relu_scalar(y),
        }
    }
}

/// The per-channel normalisation `x̂ = (x − mean[c]) · inv_std[c]`.
#[derive(Debug, Clone)]
pub struct Normalizer {
    /// The mean subtracted, per channel.
    pub mean: Vec<f32>,
    /// The reciprocal standard deviation multiplied, per channel.
    pub inv_std: Vec<f32>,
}

/// Per channel, the mean and the sum of squared deviations from it, `Σ (x − mean)²` (two passes
/// in f64, which stays accurate when the mean is large against the spread).
pub fn channel_moments(x: &[f32], l: &ChannelLayout) -> (Vec<f64>, Vec<f64>) {
    let count = l.per_channel() as f64;
    l.per_channel_map(|ch| {
        let sum: f64 = l
            .planes(x, ch)
            .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
            .sum();
        let mean = sum / count;
        let m2: f64 = l
            .planes(x, ch)
            .map(|p| p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>())
            .sum();
        (mean, m2)
    })
    .into_iter()
    .unzip()
}

/// The per-channel affine map `y = x · scale[c] + shift[c]`, then `act` (normalisation, and with
/// `Identity` the eval-mode input gradient).
pub fn scale_shift(
    x: &[f32],
    l: &ChannelLayout,
    scale: &[f32],
    shift: &[f32],
    act: Activation,
) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(l.hw)
        .zip(x.par_chunks(l.hw))
        .enumerate()
        .with_min_len(l.planes_per_task())
        .for_each(|(plane, (y, x))| {
            let (a, b) = (scale[plane % l.c], shift[plane % l.c]);
            y.iter_mut()
                .zip(x)
                .for_each(|(y, &x)| *y = act.apply(x * a + b));
        });
    y
}

/// Per channel, `Σ dy` and `Σ dy · x̂` (f64 sums): the gradients of β and γ, and the two means the
/// training-mode input gradient needs.
pub fn channel_grad_sums(
    x: &[f32],
    dy: &[f32],
    l: &ChannelLayout,
    norm: &Normalizer,
) -> (Vec<f64>, Vec<f64>) {
    l.per_channel_map(|ch| {
        let (m, s) = (norm.mean[ch], norm.inv_std[ch]);
        l.planes(x, ch).zip(l.planes(dy, ch)).fold(
            (0.0f64, 0.0f64),
            |(sum_dy, sum_dy_xhat), (x, dy)| {
                x.iter()
                    .zip(dy)
                    .fold((sum_dy, sum_dy_xhat), |(a, b), (&x, &g)| {
                        let xhat = (x - m) * s;
                        (a + g as f64, b + g as f64 * xhat as f64)
                    })
            },
        )
    })
    .into_iter()
    .unzip()
}

/// Training-mode input gradient, `dx = k[c] · (dy − mean_dy[c] − x̂ · mean_dy_xhat[c])` with
/// `k[c] = γ[c] · inv_std[c]` (the derivation is in `ops::batchnorm`).
pub fn normalize_backward(
    x: &[f32],
    dy: &[f32],
    l: &ChannelLayout,
    norm: &Normalizer,
    k: &[f32],
    mean_dy: &[f32],
    mean_dy_xhat: &[f32],
) -> Vec<f32> {
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(l.hw)
        .zip(x.par_chunks(l.hw).zip(dy.par_chunks(l.hw)))
        .enumerate()
        .with_min_len(l.planes_per_task())
        .for_each(|(plane, (dx, (x, dy)))| {
            let ch = plane % l.c;
            let (m, s) = (norm.mean[ch], norm.inv_std[ch]);
            let (k, gm, gxm) = (k[ch], mean_dy[ch], mean_dy_xhat[ch]);
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                *dx = k * (g - gm - (x - m) * s * gxm);
            }
        });
    dx
}

/// The per-channel statistics a batch-normalised candidate of a DARTS mixed op was normalised
/// with (`[C]` each).
#[derive(Debug, Clone, Copy)]
pub struct TermStats<'a> {
    /// The batch mean.
    pub mean: &'a [f32],
    /// `1/σ` of the batch.
    pub inv_std: &'a [f32],
}

/// `x̂ = x · inv_std + (0 − mean · inv_std)`: a batch norm's output without affine parameters,
/// with the float operations of [`scale_shift`] and its coefficients (`scale = 1 · inv_std`,
/// `shift = 0 − mean · scale`), so the same bits.
#[inline]
pub fn normalized_term(x: f32, mean: f32, inv_std: f32) -> f32 {
    x * inv_std + (0.0 - mean * inv_std)
}

/// The DARTS mixed op over batch-normalised candidates, forward: `y = Σₛ w[s] · tₛ` over the
/// candidates `xs` (laid out as `l`), `tₛ` normalised with `stats[s]` where it is given and
/// `xₛ` itself where not, multiplied and added in `s` order as `elementwise::weighted_sum` does:
/// the bits of normalising each candidate, then summing, in one pass and without the terms.
pub fn mixed_normalized_sum(
    xs: &[&[f32]],
    w: &[f32],
    stats: &[Option<TermStats<'_>>],
    l: &ChannelLayout,
) -> Vec<f32> {
    let mut y = vec![0.0; xs[0].len()];
    y.par_chunks_mut(l.hw)
        .enumerate()
        .with_min_len(l.planes_per_task())
        .for_each(|(plane, y)| {
            let ch = plane % l.c;
            let planes = xs.iter().map(|x| &x[plane * l.hw..][..l.hw]);
            for (s, (x, st)) in planes.zip(stats).enumerate() {
                let coefficients = st.map(|st| (st.mean[ch], st.inv_std[ch]));
                for (y, &v) in y.iter_mut().zip(x) {
                    let t = match coefficients {
                        Some((m, k)) => normalized_term(v, m, k),
                        None => v,
                    };
                    *y = if s == 0 { t * w[0] } else { *y + w[s] * t };
                }
            }
        });
    y
}

/// `Σᵢ dy[i] · x̂[i]` in f64 for a candidate normalised with `st`, `x̂` recomputed from `x`: the
/// order of `cpu::dot_f64`, so the bits of that dot product with the normalised output.
pub fn normalized_dot(dy: &[f32], x: &[f32], st: TermStats<'_>, l: &ChannelLayout) -> f64 {
    let partials: Vec<f64> = (dy.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
        .enumerate()
        .map(|(chunk, (dy, x))| {
            (dy.iter().zip(x).enumerate())
                .map(|(j, (&g, &v))| {
                    let ch = (chunk * CHUNK + j) / l.hw % l.c;
                    g as f64 * normalized_term(v, st.mean[ch], st.inv_std[ch]) as f64
                })
                .sum::<f64>()
        })
        .collect();
    partials.iter().sum()
}

/// The input gradient of a batch-normalised candidate of a DARTS mixed op `Σₛ wₛ · tₛ`, from
/// `dy` at the sum, the candidate's weight `w`, its input `x` and the statistics `st` it was
/// normalised with: with `g = w · dy` and `t = x̂` ([`normalized_term`]),
/// `dx = inv_std[c] · ((g − mean(g)) − t · mean(g · t))`, the means over each channel (summed in
/// f64, rounded once). The batch-norm backward (no affine parameters) with the normalised output
/// for `x̂`; `kernels/batchnorm.cu`'s mixed backward computes it operation by operation alike.
pub fn mixed_normalized_backward(
    dy: &[f32],
    w: f32,
    x: &[f32],
    st: TermStats<'_>,
    l: &ChannelLayout,
) -> Vec<f32> {
    let count = l.per_channel() as f64;
    let means: Vec<(f32, f32)> = l.per_channel_map(|ch| {
        let (m, k) = (st.mean[ch], st.inv_std[ch]);
        let (sum_g, sum_gt) =
            l.planes(dy, ch)
                .zip(l.planes(x, ch))
                .fold((0.0f64, 0.0f64), |sums, (dy, x)| {
                    dy.iter().zip(x).fold(sums, |(a, b), (&dy, &v)| {
                        let g = (w * dy) as f64;
                        (a + g, b + g * normalized_term(v, m, k) as f64)
                    })
                });
        ((sum_g / count) as f32, (sum_gt / count) as f32)
    });
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(l.hw)
        .zip(dy.par_chunks(l.hw).zip(x.par_chunks(l.hw)))
        .enumerate()
        .with_min_len(l.planes_per_task())
        .for_each(|(plane, (dx, (dy, x)))| {
            let ch = plane % l.c;
            let ((mean_g, mean_gt), m, k) = (means[ch], st.mean[ch], st.inv_std[ch]);
            for ((dx, &dy), &v) in dx.iter_mut().zip(dy).zip(x) {
                let t = normalized_term(v, m, k);
                *dx = k * ((w * dy - mean_g) - t * mean_gt);
            }
        });
    dx
}

/// The input gradient of a candidate of a DARTS mixed op normalised with constant (running)
/// statistics, eval mode's: `dx = inv_std[c] · (w · dy)`, each product rounded, as
/// `kernels/batchnorm.cu`'s mixed backward computes it.
pub fn mixed_eval_backward(dy: &[f32], w: f32, inv_std: &[f32], l: &ChannelLayout) -> Vec<f32> {
    let mut dx = vec![0.0; dy.len()];
    dx.par_chunks_mut(l.hw)
        .zip(dy.par_chunks(l.hw))
        .enumerate()
        .with_min_len(l.planes_per_task())
        .for_each(|(plane, (dx, dy))| {
            let k = inv_std[plane % l.c];
            for (dx, &dy) in dx.iter_mut().zip(dy) {
                *dx = k * (w * dy);
            }
        });
    dx
}
