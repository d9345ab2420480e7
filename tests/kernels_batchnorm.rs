//! Every kernel of `kernels/batchnorm.cu`, run through the GPU ops of
//! `darts::device::gpu::batchnorm`, against the CPU reference `darts::device::cpu::batchnorm` and
//! the per-channel arithmetic of `darts::ops::batchnorm`: on the emulator always, and on CUDA when
//! this machine has a driver and the build has PTX (otherwise that test says it skipped). Then the
//! whole GPU pipeline (statistics, normalisation, backward) against `ops::batchnorm`'s forward and
//! gradients, in training and eval mode. Channels include a large mean with a tiny spread (where a
//! careless one-pass variance cancels) and a constant channel; every device allocation starts as
//! NaN, so an output element a kernel fails to write shows up.

mod common;

use common::gpu::{Bits, EXACT, Tolerance, check, cpu_reference_tests, random};
use darts::device::cpu::batchnorm::{
    self as reference, ChannelLayout, Normalizer as CpuNormalizer, TermStats,
};
use darts::device::cpu::dot_f64;
use darts::device::cpu::elementwise::relu_backward;
use darts::device::gpu::batchnorm::{
    self as ops, MixedInput, MixedTerms, Normalizer, OutputGrad, Running,
};
use darts::device::gpu::mixed::{self, WeightRun};
use darts::device::gpu::{DeviceBuffer, EmuExecutor, Executor, GpuError, KernelId};
use darts::ops::batchnorm::{self as bn, Activation, RunningStats};
use darts::{Tape, Tensor};

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::BatchnormMomentsPartialFwdF32,
    KernelId::BatchnormNormalizeFwdF32,
    KernelId::BatchnormCoefficientsFwdF32,
    KernelId::BatchnormScaleShiftFwdF32,
    KernelId::BatchnormGradPartialBwdF32,
    KernelId::BatchnormGradFinalBwdF32,
    KernelId::BatchnormNormalizeBwdF32,
    KernelId::BatchnormMixedSumFwdF32,
    KernelId::BatchnormMixedPartialBwdF32,
    KernelId::BatchnormMixedInputBwdF32,
];

const EPS: f32 = 1e-5;

/// (N, C, HW): the NCHW test shape 3x5x7x9, channels of 2442 elements (two partial sums each),
/// an `[N, C]` input, and the smallest channels training accepts (2 values).
const LAYOUTS: [(usize, usize, usize); 4] = [(3, 5, 63), (2, 3, 33 * 37), (7, 33, 1), (2, 3, 1)];

/// For the per-channel sums: in f64 in another order (and, for the variance, another formula)
/// than the CPU, then rounded once to f32.
const REDUCTION: Tolerance = Tolerance {
    atol: 1e-9,
    eps: f32::EPSILON,
};

/// For the whole pipeline against the ops: a statistic one ulp off moves every output a little.
const PIPELINE: Tolerance = Tolerance {
    atol: 1e-5,
    eps: 1e-5,
};

/// A `[N, C, HW]` input whose channels differ: channel `c % 4` is 0.7 + 1.5·z, 1000 + 0.01·z
/// (|mean| ≫ std), the constant 2.5 (zero variance), or −3 + 4·z, with z standard normal.
/// With `well_conditioned`, every channel is 0.7 + 1.5·z.
fn input(l: &ChannelLayout, seed: u64, well_conditioned: bool) -> Vec<f32> {
    random(l.n * l.c * l.hw, seed)
        .iter()
        .enumerate()
        .map(|(i, &z)| match (well_conditioned, i / l.hw % l.c % 4) {
            (true, _) | (_, 0) => 0.7 + 1.5 * z,
            (_, 1) => 1000.0 + 0.01 * z,
            (_, 2) => 2.5,
            _ => -3.0 + 4.0 * z,
        })
        .collect()
}

/// `v as f32` for every value.
fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&v| v as f32).collect()
}

/// `1 / √(var + eps)` as `ops::batchnorm` computes it.
fn cpu_inv_std(var: impl Iterator<Item = f64>) -> Vec<f32> {
    var.map(|v| (1.0 / (v + EPS as f64).sqrt()) as f32)
        .collect()
}

/// `(scale, shift) = (γ · inv_std, β − mean · scale)` as `ops::batchnorm` computes them.
fn cpu_coefficients(norm: &CpuNormalizer, gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&norm.inv_std)
        .map(|(g, s)| g * s)
        .collect();
    let shift = beta
        .iter()
        .zip(norm.mean.iter().zip(&scale))
        .map(|(b, (m, a))| b - m * a)
        .collect();
    (scale, shift)
}

/// Checks a scale (and a shift, where one was computed) against the CPU's from `norm` (what the
/// kernel itself computed for the mean and `1/σ`, or the CPU's where it was fed those), with γ, β
/// or without (`None`); returns the CPU's `(scale, shift)`.
fn check_coefficients(
    e: &dyn Executor,
    what: &str,
    (scale, shift): (&DeviceBuffer<f32>, Option<&DeviceBuffer<f32>>),
    norm: &CpuNormalizer,
    affine: Option<(&[f32], &[f32])>,
) -> (Vec<f32>, Vec<f32>) {
    let c = norm.mean.len();
    let (ones, zeros) = (vec![1.0; c], vec![0.0; c]);
    let (gamma, beta) = affine.unwrap_or((&ones, &zeros));
    let (want_scale, want_shift) = cpu_coefficients(norm, gamma, beta);
    check(e, &format!("{what} scale"), scale, &want_scale, EXACT);
    if let Some(shift) = shift {
        check(e, &format!("{what} shift"), shift, &want_shift, EXACT);
    }
    (want_scale, want_shift)
}

/// The per-channel blend of PyTorch's running-statistics update, as `ops::batchnorm` computes it.
fn cpu_blend(running: &[f32], batch: &[f32], momentum: f32) -> Vec<f32> {
    let m = momentum as f64;
    running
        .iter()
        .zip(batch)
        .map(|(&r, &b)| ((1.0 - m) * r as f64 + m * b as f64) as f32)
        .collect()
}

/// Each kernel on its own, against the CPU function it mirrors, fed the CPU's own inputs.
fn check_kernels(e: &dyn Executor, l: &ChannelLayout, seed: u64) {
    let what = |op: &str| format!("{op} {l:?}");
    let (c, m) = (l.c, l.per_channel() as f64);
    let x = input(l, seed, false);
    let dy = random(x.len(), seed + 1);
    let (gamma, beta) = (random(c, seed + 2), random(c, seed + 3));
    let (dx, ddy) = (e.to_device(&x).unwrap(), e.to_device(&dy).unwrap());
    let (dgamma, dbeta) = (e.to_device(&gamma).unwrap(), e.to_device(&beta).unwrap());

    // Batch statistics, the affine coefficients from them, and the running statistics.
    let (mean, m2) = reference::channel_moments(&x, l);
    let running_mean = random(c, seed + 4);
    let running_var: Vec<f32> = random(c, seed + 5).iter().map(|v| v * v).collect();
    let (rm, rv) = (
        e.to_device(&running_mean).unwrap(),
        e.to_device(&running_var).unwrap(),
    );
    let running = Running {
        mean: &rm,
        var: &rv,
        momentum: 0.1,
    };
    let gpu_affine = Some((&dgamma, &dbeta));
    let out = ops::train_forward(
        e,
        &dx,
        l,
        EPS,
        gpu_affine,
        Some(running),
        Activation::Identity,
    )
    .unwrap();
    check(e, &what("batch mean"), &out.mean, &to_f32(&mean), REDUCTION);
    let want = cpu_inv_std(m2.iter().map(|s| s / m));
    check(e, &what("batch inv_std"), &out.inv_std, &want, REDUCTION);
    // From the kernel's own statistics: the coefficients and the output, exactly.
    let own = CpuNormalizer {
        mean: e.to_host(&out.mean).unwrap(),
        inv_std: e.to_host(&out.inv_std).unwrap(),
    };
    let affine = Some((&gamma[..], &beta[..]));
    let (scale, shift) = check_coefficients(e, &what("batch"), (&out.scale, None), &own, affine);
    let want = reference::scale_shift(&x, l, &scale, &shift, Activation::Identity);
    check(e, &what("train y"), &out.y, &want, EXACT);
    // With the ReLU: the same statistics, and their map's ReLU.
    let relu = ops::train_forward(e, &dx, l, EPS, gpu_affine, None, Activation::Relu).unwrap();
    check(e, &what("relu batch mean"), &relu.mean, &own.mean, Bits);
    check(e, &what("relu inv_std"), &relu.inv_std, &own.inv_std, Bits);
    let want = reference::scale_shift(&x, l, &scale, &shift, Activation::Relu);
    check(e, &what("train relu(y)"), &relu.y, &want, EXACT);
    let (new_mean, new_var) = out.running.as_ref().unwrap();
    let want = cpu_blend(&running_mean, &own.mean, 0.1);
    check(e, &what("running mean"), new_mean, &want, EXACT);
    let var: Vec<f64> = m2.iter().map(|s| s / (m - 1.0)).collect();
    let want = cpu_blend(&running_var, &to_f32(&var), 0.1);
    check(e, &what("running var"), new_var, &want, REDUCTION);
    // The old statistics are inputs only.
    check(e, &what("old running mean"), &rm, &running_mean, Bits);
    // Without γ, β and running statistics (null pointers): the same statistics, plain
    // coefficients, no running statistics.
    let plain = ops::train_forward(e, &dx, l, EPS, None, None, Activation::Identity).unwrap();
    assert!(plain.running.is_none());
    check(e, &what("plain batch mean"), &plain.mean, &own.mean, Bits);
    check(
        e,
        &what("plain inv_std"),
        &plain.inv_std,
        &own.inv_std,
        Bits,
    );
    let plain_what = what("plain batch");
    let (scale, shift) = check_coefficients(e, &plain_what, (&plain.scale, None), &own, None);
    let want = reference::scale_shift(&x, l, &scale, &shift, Activation::Identity);
    check(e, &what("plain train y"), &plain.y, &want, EXACT);

    // Eval mode's coefficients from the running statistics.
    let running_norm = CpuNormalizer {
        mean: running_mean.clone(),
        inv_std: cpu_inv_std(running_var.iter().map(|&v| v as f64)),
    };
    for affine in [Some((&gamma[..], &beta[..])), None] {
        let buffers = affine.map(|_| (&dgamma, &dbeta));
        let got = ops::eval_coefficients(e, &rm, &rv, EPS, buffers).unwrap();
        let what = what(&format!("eval affine {}", affine.is_some()));
        check(
            e,
            &format!("{what} inv_std"),
            &got.inv_std,
            &running_norm.inv_std,
            EXACT,
        );
        let got_coefficients = (&got.scale, Some(&got.shift));
        check_coefficients(e, &what, got_coefficients, &running_norm, affine);
    }

    // From here on the CPU's normalisation, so that every kernel sees the CPU's inputs.
    let norm = CpuNormalizer {
        mean: to_f32(&mean),
        inv_std: cpu_inv_std(m2.iter().map(|s| s / m)),
    };
    let (dmean, dinv) = (
        e.to_device(&norm.mean).unwrap(),
        e.to_device(&norm.inv_std).unwrap(),
    );
    let gpu_norm = Normalizer {
        mean: &dmean,
        inv_std: &dinv,
    };
    let (scale, shift) = cpu_coefficients(&norm, &gamma, &beta);
    let (dscale, dshift) = (e.to_device(&scale).unwrap(), e.to_device(&shift).unwrap());

    // The normalisation with and without the ReLU, and the eval-mode input gradient (a zero
    // shift).
    for act in [Activation::Identity, Activation::Relu] {
        let want = reference::scale_shift(&x, l, &scale, &shift, act);
        let got = ops::scale_shift(e, &dx, l, &dscale, Some(&dshift), act).unwrap();
        check(
            e,
            &what(&format!("scale_shift {act:?}")),
            &got,
            &want,
            EXACT,
        );
    }
    let want = reference::scale_shift(&dy, l, &scale, &vec![0.0; c], Activation::Identity);
    let got = ops::scale_shift(e, &ddy, l, &dscale, None, Activation::Identity).unwrap();
    check(e, &what("scale_shift of dy"), &got, &want, EXACT);

    // The gradient sums and the training-mode input gradient, from dy as it is and from dy masked
    // by a ReLU's output (the ReLU of the normalisation above), as the ReLU's backward masks it.
    let z = reference::scale_shift(&x, l, &scale, &shift, Activation::Relu);
    let dz = e.to_device(&z).unwrap();
    for relu_out in [None, Some(&dz)] {
        let what = |op: &str| what(&format!("{op} relu {}", relu_out.is_some()));
        let grad = OutputGrad { dy: &ddy, relu_out };
        let dy = match relu_out {
            Some(_) => relu_backward(&z, &dy),
            None => dy.clone(),
        };
        let (sum_dy, sum_dy_xhat) = reference::channel_grad_sums(&x, &dy, l, &norm);
        let sums = ops::channel_grad_sums(e, &dx, grad, l, gpu_norm).unwrap();
        check(
            e,
            &what("sum dy"),
            &sums.sum_dy,
            &to_f32(&sum_dy),
            REDUCTION,
        );
        check(
            e,
            &what("sum dy·x̂"),
            &sums.sum_dy_xhat,
            &to_f32(&sum_dy_xhat),
            REDUCTION,
        );
        // The training-mode input gradient, with the same sums on the way.
        let mean_of = |s: &[f64]| -> Vec<f32> { s.iter().map(|v| (v / m) as f32).collect() };
        let (mean_dy, mean_dy_xhat) = (mean_of(&sum_dy), mean_of(&sum_dy_xhat));
        let want =
            reference::normalize_backward(&x, &dy, l, &norm, &scale, &mean_dy, &mean_dy_xhat);
        for with_sums in [true, false] {
            let (got, sums) =
                ops::train_backward(e, &dx, grad, l, gpu_norm, &dscale, with_sums).unwrap();
            // The means come from the kernel's own sums, which may differ from the CPU's in the
            // last bit of a double, and so (rarely) move a mean by one f32 rounding.
            check(e, &what("train_backward dx"), &got, &want, PIPELINE);
            assert_eq!(sums.is_some(), with_sums);
            if let Some(sums) = sums {
                check(
                    e,
                    &what("train_backward sum dy"),
                    &sums.sum_dy,
                    &to_f32(&sum_dy),
                    REDUCTION,
                );
                let want = to_f32(&sum_dy_xhat);
                check(
                    e,
                    &what("train_backward sum dy·x̂"),
                    &sums.sum_dy_xhat,
                    &want,
                    REDUCTION,
                );
            }
        }
    }
}

/// The normalisation, per channel, with the given statistics: `x · inv_std + (0 − mean · inv_std)`,
/// the batch norm's output without affine parameters (`reference::scale_shift` with the CPU's
/// coefficients), as the mixed op's kernels recompute it.
fn normalize_cpu(x: &[f32], l: &ChannelLayout, mean: &[f32], inv_std: &[f32]) -> Vec<f32> {
    let norm = CpuNormalizer {
        mean: mean.to_vec(),
        inv_std: inv_std.to_vec(),
    };
    let (scale, shift) = cpu_coefficients(&norm, &vec![1.0; l.c], &vec![0.0; l.c]);
    reference::scale_shift(x, l, &scale, &shift, Activation::Identity)
}

/// How a candidate of the mixed op's forward is tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Summed as it is.
    Plain,
    /// Batch-normalised, without running statistics.
    Normalized,
    /// Batch-normalised, with running statistics.
    Running,
    /// Normalised with running statistics, in eval mode.
    Eval,
}

/// The mixed op's forward (`mixed_sum_forward`: the statistics launch, then the one that
/// normalises and sums) over `slots`, against `train_forward` of each normalised candidate (itself
/// checked against the CPU above) summed by `mixed::mixed_forward`: the same bits for the sum, the
/// statistics (zeros in a plain slot's rows) and the running statistics. The weights are a run
/// from position 2 of a longer buffer.
fn check_mixed_forward(e: &dyn Executor, l: &ChannelLayout, seed: u64, slots: &[Slot]) {
    let what = format!("mixed forward {l:?} {slots:?}");
    let host = |b: &DeviceBuffer<f32>| e.to_host(b).unwrap();
    let xs: Vec<DeviceBuffer<f32>> = (0..slots.len())
        .map(|s| e.to_device(&input(l, seed + s as u64, s % 3 == 2)).unwrap())
        .collect();
    let stats: Vec<(DeviceBuffer<f32>, DeviceBuffer<f32>)> = (0..slots.len() as u64)
        .map(|s| {
            let var: Vec<f32> = random(l.c, seed + 10 + s).iter().map(|v| v * v).collect();
            let mean = random(l.c, seed + 20 + s);
            (e.to_device(&mean).unwrap(), e.to_device(&var).unwrap())
        })
        .collect();
    let running: Vec<Option<Running<'_>>> = (slots.iter().zip(&stats))
        .map(|(&slot, (mean, var))| {
            (slot == Slot::Running).then_some(Running {
                mean,
                var,
                momentum: 0.1,
            })
        })
        .collect();
    let inputs: Vec<MixedInput<'_>> = (slots.iter().zip(&xs).zip(&running).zip(&stats))
        .map(|(((&slot, x), &r), (mean, var))| match slot {
            Slot::Plain => MixedInput::Plain(x),
            Slot::Eval => MixedInput::Eval { x, mean, var },
            _ => MixedInput::Normalized(x, r),
        })
        .collect();
    let w = e.to_device(&random(slots.len() + 4, seed + 30)).unwrap();
    let run = WeightRun {
        weights: &w,
        offset: 2,
    };
    let got = ops::mixed_sum_forward(e, &inputs, run, l, EPS).unwrap();

    // Each normalised candidate by the batch norm's own kernels: its output, its mean and 1/σ,
    // and in training its new running statistics.
    let identity = Activation::Identity;
    let one_by_one: Vec<Option<OneByOne>> = (slots.iter().zip(&xs).zip(&running).zip(&stats))
        .map(|(((&slot, x), &r), (mean, var))| match slot {
            Slot::Plain => None,
            Slot::Eval => {
                let k = ops::eval_coefficients(e, mean, var, EPS, None).unwrap();
                let y = ops::scale_shift(e, x, l, &k.scale, Some(&k.shift), identity).unwrap();
                Some((y, [host(mean), host(&k.inv_std)].concat(), None))
            }
            _ => {
                let out = ops::train_forward(e, x, l, EPS, None, r, identity).unwrap();
                let rows = [host(&out.mean), host(&out.inv_std)].concat();
                Some((out.y, rows, out.running))
            }
        })
        .collect();
    let terms: Vec<&DeviceBuffer<f32>> = (one_by_one.iter().zip(&xs))
        .map(|(one, x)| one.as_ref().map_or(x, |(y, _, _)| y))
        .collect();
    let want = host(&mixed::mixed_forward(e, &terms, run).unwrap());
    check(e, &format!("{what} y"), &got.y, &want, Bits);
    let zeros = vec![0.0; 2 * l.c];
    let want_stats: Vec<f32> = (one_by_one.iter())
        .flat_map(|one| {
            one.as_ref()
                .map_or(zeros.clone(), |(_, rows, _)| rows.clone())
        })
        .collect();
    check(e, &format!("{what} stats"), &got.stats, &want_stats, Bits);
    assert_eq!(got.running.len(), slots.len(), "{what}");
    for (s, (new, one)) in got.running.iter().zip(&one_by_one).enumerate() {
        let want = one.as_ref().and_then(|(_, _, running)| running.as_ref());
        assert_eq!(new.is_some(), slots[s] == Slot::Running, "{what} slot {s}");
        if let (Some((m, v)), Some((want_m, want_v))) = (new, want) {
            check(
                e,
                &format!("{what} running mean{s}"),
                m,
                &host(want_m),
                Bits,
            );
            check(e, &format!("{what} running var{s}"), v, &host(want_v), Bits);
        }
    }
}

/// A normalised candidate of the mixed op's forward, computed op by op: its output, its rows of
/// the statistics (mean, then `1/σ`), and its new running statistics.
type OneByOne = (
    DeviceBuffer<f32>,
    Vec<f32>,
    Option<(DeviceBuffer<f32>, DeviceBuffer<f32>)>,
);

/// The mixed op's backward (the input gradients' two kernels and the weights' gradient) against
/// the CPU reference, for `normalized` slots (true: a batch-normalised candidate) of which
/// `needed` want an input gradient: seven as on a DARTS edge, or other patterns. The statistics
/// are arbitrary (any mean, a positive `1/σ`), and NaN in a plain slot's rows, which no kernel may
/// read. The weights are a run from position 3 of a longer buffer; every output starts as NaN, and
/// an unneeded one must stay unallocated.
fn check_mixed(
    e: &dyn Executor,
    l: &ChannelLayout,
    seed: u64,
    (normalized, train): (&[bool], bool),
    needed: &[bool],
) {
    let count = l.n * l.c * l.hw;
    let what = format!("mixed {l:?} {normalized:?} train {train} {needed:?}");
    let dy = random(count, seed);
    let w = random(normalized.len() + 5, seed + 1);
    let xs: Vec<Vec<f32>> = (0..normalized.len())
        .map(|s| input(l, seed + 2 + s as u64, s % 2 == 0))
        .collect();
    let rows: Vec<(Vec<f32>, Vec<f32>)> = (normalized.iter().enumerate())
        .map(|(s, &norm)| match norm {
            true => (
                random(l.c, seed + 20 + s as u64),
                (random(l.c, seed + 40 + s as u64).iter())
                    .map(|v| v.abs() + 0.1)
                    .collect(),
            ),
            false => (vec![f32::NAN; l.c], vec![f32::NAN; l.c]),
        })
        .collect();
    let ts: Vec<Vec<f32>> = (xs.iter().zip(&rows).zip(normalized))
        .map(|((x, (mean, inv_std)), &norm)| match norm {
            true => normalize_cpu(x, l, mean, inv_std),
            false => x.clone(),
        })
        .collect();
    let stats: Vec<f32> = rows
        .iter()
        .flat_map(|(m, s)| [&m[..], &s[..]].concat())
        .collect();
    let (ddy, dw, dstats) = (
        e.to_device(&dy).unwrap(),
        e.to_device(&w).unwrap(),
        e.to_device(&stats).unwrap(),
    );
    let dxs: Vec<DeviceBuffer<f32>> = xs.iter().map(|x| e.to_device(x).unwrap()).collect();
    let refs: Vec<&DeviceBuffer<f32>> = dxs.iter().collect();
    let terms = MixedTerms {
        xs: &refs,
        normalized,
        stats: &dstats,
        train,
    };
    let run = WeightRun {
        weights: &dw,
        offset: 3,
    };
    let got = ops::mixed_input_backward(e, &ddy, run, terms, l, needed).unwrap();
    assert_eq!(got.len(), normalized.len(), "{what}");
    for (s, dx) in got.iter().enumerate() {
        let weight = w[3 + s];
        match (dx, needed[s]) {
            (None, false) => {}
            (Some(dx), true) if normalized[s] && train => {
                let (mean, inv_std) = (&rows[s].0, &rows[s].1);
                let st = TermStats { mean, inv_std };
                let want = reference::mixed_normalized_backward(&dy, weight, &xs[s], st, l);
                // The means come from the kernels' own sums (see train_backward's check).
                check(e, &format!("{what} dx{s}"), dx, &want, PIPELINE);
            }
            (Some(dx), true) if normalized[s] => {
                let want = reference::mixed_eval_backward(&dy, weight, &rows[s].1, l);
                check(e, &format!("{what} dx{s}"), dx, &want, EXACT);
            }
            (Some(dx), true) => {
                let want: Vec<f32> = dy.iter().map(|&g| weight * g).collect();
                check(e, &format!("{what} dx{s}"), dx, &want, EXACT);
            }
            (dx, need) => panic!("{what}: slot {s} needed {need}, got {}", dx.is_some()),
        }
    }
    // The weights' gradient: Σ dy · tₛ at the run, zeros elsewhere; the bits of the plain mixed
    // op's reduction over the terms themselves.
    let got = ops::mixed_weight_backward(e, &ddy, run, terms, l).unwrap();
    let mut want = vec![0.0; w.len()];
    for (g, t) in want[3..].iter_mut().zip(&ts) {
        *g = dot_f64(&dy, t) as f32;
    }
    check(e, &format!("{what} dw"), &got, &want, REDUCTION);
    let dts: Vec<DeviceBuffer<f32>> = ts.iter().map(|t| e.to_device(t).unwrap()).collect();
    let dts: Vec<&DeviceBuffer<f32>> = dts.iter().collect();
    let plain = mixed::mixed_backward_weights(e, &ddy, &dts, run).unwrap();
    check(
        e,
        &format!("{what} dw"),
        &got,
        &e.to_host(&plain).unwrap(),
        Bits,
    );
}

/// The tensor shape of a layout: `[N, C, HW, 1]`, or `[N, C]` when HW = 1.
fn shape(l: &ChannelLayout) -> Vec<usize> {
    if l.hw == 1 {
        vec![l.n, l.c]
    } else {
        vec![l.n, l.c, l.hw, 1]
    }
}

/// The GPU pipeline of a training-mode batch norm (forward and backward) against
/// `ops::batchnorm::batch_norm_train` and its gradients, with or without affine parameters, then
/// `act`.
fn check_train_pipeline(
    e: &dyn Executor,
    l: &ChannelLayout,
    seed: u64,
    affine: bool,
    act: Activation,
) {
    let what = |op: &str| format!("train pipeline {op} {l:?} affine {affine} {act:?}");
    let x = input(l, seed, true);
    let dy = random(x.len(), seed + 1);
    let (gamma, beta) = (random(l.c, seed + 2), random(l.c, seed + 3));

    let mut tape = Tape::new();
    let xv = tape.leaf(Tensor::from_vec(x.clone(), &shape(l)).unwrap());
    let params = affine.then(|| {
        (
            tape.leaf(Tensor::from_vec(gamma.clone(), &[l.c]).unwrap()),
            tape.leaf(Tensor::from_vec(beta.clone(), &[l.c]).unwrap()),
        )
    });
    let (running_mean, running_var) = (random(l.c, seed + 4), random(l.c, seed + 5));
    let (rm, rv) = (
        Tensor::from_vec(running_mean.clone(), &[l.c]).unwrap(),
        Tensor::from_vec(running_var.clone(), &[l.c]).unwrap(),
    );
    let running = RunningStats {
        mean: &rm,
        var: &rv,
        momentum: 0.1,
    };
    let (y, new) = bn::batch_norm_train(&mut tape, xv, params, EPS, Some(running), act).unwrap();
    let (want_mean, want_var) = new.unwrap();
    let want_y = tape.value(y).to_vec();
    let wrt: Vec<_> = std::iter::once(xv)
        .chain(params.into_iter().flat_map(|(g, b)| [g, b]))
        .collect();
    let seed_grad = Tensor::from_vec(dy.clone(), &shape(l)).unwrap();
    let grads = tape.backward_from(y, seed_grad, &wrt).unwrap();

    let (dx, ddy) = (e.to_device(&x).unwrap(), e.to_device(&dy).unwrap());
    let (dgamma, dbeta) = (e.to_device(&gamma).unwrap(), e.to_device(&beta).unwrap());
    let (drm, drv) = (
        e.to_device(&running_mean).unwrap(),
        e.to_device(&running_var).unwrap(),
    );
    let running = Running {
        mean: &drm,
        var: &drv,
        momentum: 0.1,
    };
    let out = ops::train_forward(
        e,
        &dx,
        l,
        EPS,
        affine.then_some((&dgamma, &dbeta)),
        Some(running),
        act,
    )
    .unwrap();
    check(e, &what("y"), &out.y, &want_y, PIPELINE);
    let (got_mean, got_var) = out.running.as_ref().unwrap();
    check(
        e,
        &what("running mean"),
        got_mean,
        want_mean.data(),
        REDUCTION,
    );
    check(e, &what("running var"), got_var, want_var.data(), REDUCTION);

    let grad = OutputGrad {
        dy: &ddy,
        relu_out: (act == Activation::Relu).then_some(&out.y),
    };
    let (got_dx, sums) =
        ops::train_backward(e, &dx, grad, l, out.normalizer(), &out.scale, affine).unwrap();
    check(e, &what("dx"), &got_dx, grads[0].data(), PIPELINE);
    if let Some(sums) = sums {
        check(
            e,
            &what("dgamma"),
            &sums.sum_dy_xhat,
            grads[1].data(),
            PIPELINE,
        );
        check(e, &what("dbeta"), &sums.sum_dy, grads[2].data(), PIPELINE);
    }
}

/// The GPU pipeline of an eval-mode batch norm, then `act`, against
/// `ops::batchnorm::batch_norm_eval`.
fn check_eval_pipeline(e: &dyn Executor, l: &ChannelLayout, seed: u64, act: Activation) {
    let what = |op: &str| format!("eval pipeline {op} {l:?} {act:?}");
    let x = input(l, seed, false);
    let dy = random(x.len(), seed + 1);
    let (gamma, beta) = (random(l.c, seed + 2), random(l.c, seed + 3));
    let running_mean = random(l.c, seed + 4);
    let running_var: Vec<f32> = random(l.c, seed + 5).iter().map(|v| 0.5 + v * v).collect();

    let mut tape = Tape::new();
    let xv = tape.leaf(Tensor::from_vec(x.clone(), &shape(l)).unwrap());
    let gv = tape.leaf(Tensor::from_vec(gamma.clone(), &[l.c]).unwrap());
    let bv = tape.leaf(Tensor::from_vec(beta.clone(), &[l.c]).unwrap());
    let rm = Tensor::from_vec(running_mean.clone(), &[l.c]).unwrap();
    let rv = Tensor::from_vec(running_var.clone(), &[l.c]).unwrap();
    let y = bn::batch_norm_eval(&mut tape, xv, Some((gv, bv)), &rm, &rv, EPS, act).unwrap();
    let want_y = tape.value(y).to_vec();
    let seed_grad = Tensor::from_vec(dy.clone(), &shape(l)).unwrap();
    let grads = tape.backward_from(y, seed_grad, &[xv, gv, bv]).unwrap();

    let (dx, ddy) = (e.to_device(&x).unwrap(), e.to_device(&dy).unwrap());
    let (dgamma, dbeta) = (e.to_device(&gamma).unwrap(), e.to_device(&beta).unwrap());
    let dmean = e.to_device(&running_mean).unwrap();
    let dvar = e.to_device(&running_var).unwrap();
    let coefficients =
        ops::eval_coefficients(e, &dmean, &dvar, EPS, Some((&dgamma, &dbeta))).unwrap();
    let norm = Normalizer {
        mean: &dmean,
        inv_std: &coefficients.inv_std,
    };
    let got_y = ops::scale_shift(
        e,
        &dx,
        l,
        &coefficients.scale,
        Some(&coefficients.shift),
        act,
    )
    .unwrap();
    check(e, &what("y"), &got_y, &want_y, EXACT);
    // After a ReLU, dy masked by its output first (as `ops::batchnorm` does in eval mode, with
    // the elementwise family's kernel; here on the host).
    let relu_out = (act == Activation::Relu).then_some(&got_y);
    let masked = relu_out.map(|z| {
        let mask = relu_backward(&e.to_host(z).unwrap(), &dy);
        e.to_device(&mask).unwrap()
    });
    let dy_at_y = masked.as_ref().unwrap_or(&ddy);
    let identity = Activation::Identity;
    let got_dx = ops::scale_shift(e, dy_at_y, l, &coefficients.scale, None, identity).unwrap();
    check(e, &what("dx"), &got_dx, grads[0].data(), EXACT);
    let grad = OutputGrad { dy: &ddy, relu_out };
    let sums = ops::channel_grad_sums(e, &dx, grad, l, norm).unwrap();
    check(
        e,
        &what("dgamma"),
        &sums.sum_dy_xhat,
        grads[1].data(),
        REDUCTION,
    );
    check(e, &what("dbeta"), &sums.sum_dy, grads[2].data(), REDUCTION);
}

/// Everything above on every layout of [`LAYOUTS`], on `exec`.
fn check_against_cpu(e: &dyn Executor) {
    for (case, &(n, c, hw)) in LAYOUTS.iter().enumerate() {
        let l = ChannelLayout { n, c, hw };
        let seed = 100 * case as u64;
        check_kernels(e, &l, seed);
        if l.per_channel() >= 2 {
            use Slot::{Normalized, Plain, Running};
            let edge = [Running, Running, Plain, Running, Running, Running, Running];
            check_mixed_forward(e, &l, seed + 70, &edge);
            check_mixed_forward(e, &l, seed + 80, &[Normalized, Plain, Running, Normalized]);
            check_mixed_forward(e, &l, seed + 90, &[Running; 8]);
        }
        check_mixed_forward(e, &l, seed + 95, &[Slot::Plain, Slot::Plain]);
        let eval = [
            Slot::Eval,
            Slot::Eval,
            Slot::Plain,
            Slot::Eval,
            Slot::Eval,
            Slot::Eval,
        ];
        check_mixed_forward(e, &l, seed + 97, &eval);
        let edge = [true, true, false, true, true, true, true];
        let some = [true, false, true, true, false, true, true];
        for train in [true, false] {
            check_mixed(e, &l, seed + 30, (&edge, train), &[true; 7]);
            check_mixed(e, &l, seed + 40, (&edge, train), &some);
            check_mixed(e, &l, seed + 50, (&[true; 8], train), &[true; 8]);
        }
        check_mixed(e, &l, seed + 60, (&[false, false], true), &[true, true]);
        for act in [Activation::Identity, Activation::Relu] {
            check_train_pipeline(e, &l, seed + 10, case % 2 == 0, act);
            check_eval_pipeline(e, &l, seed + 20, act);
        }
    }
}

// The mixed op's checks also launch the mixed family's sum and weight-gradient kernels.
cpu_reference_tests!(
    check_against_cpu,
    COVERED,
    KernelId::MixedSumFwdF32,
    KernelId::MixedSumWeightPartialBwdF32,
    KernelId::ElementwiseWeightedSumWeightFinalBwdF32
);

/// The statistics and the gradient sums twice on the same data, with four partial sums per
/// channel and a ReLU after the normalisation: the same bits.
#[test]
fn reductions_are_deterministic() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let l = ChannelLayout {
        n: 4,
        c: 3,
        hw: 1601,
    };
    let x = e.to_device(&input(&l, 1, false)).unwrap();
    let dy = e.to_device(&random(l.n * l.c * l.hw, 2)).unwrap();
    let bits = |b: &DeviceBuffer<f32>| -> Vec<u32> {
        e.to_host(b).unwrap().iter().map(|v| v.to_bits()).collect()
    };
    let runs: Vec<Vec<u32>> = (0..2)
        .map(|_| {
            let out = ops::train_forward(e, &x, &l, EPS, None, None, Activation::Relu).unwrap();
            let grad = OutputGrad {
                dy: &dy,
                relu_out: Some(&out.y),
            };
            let (dx, sums) =
                ops::train_backward(e, &x, grad, &l, out.normalizer(), &out.scale, true).unwrap();
            let sums = sums.unwrap();
            [
                &out.y,
                &out.mean,
                &out.inv_std,
                &out.scale,
                &dx,
                &sums.sum_dy,
                &sums.sum_dy_xhat,
            ]
            .iter()
            .flat_map(|b| bits(b))
            .collect()
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].iter().all(|&b| f32::from_bits(b).is_finite()),
        "{:?}",
        runs[0]
    );
}

#[test]
fn bad_arguments_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let l = ChannelLayout { n: 2, c: 3, hw: 2 };
    let x = e.to_device(&[1.0f32; 12]).unwrap();
    let three = e.to_device(&[1.0f32; 3]).unwrap();
    let two = e.to_device(&[1.0f32; 2]).unwrap();
    let other = e.to_device(&[1.0f32; 3]).unwrap();
    let wrong = ChannelLayout { n: 3, ..l };
    let train = |x, l: &ChannelLayout, eps, affine, running| {
        ops::train_forward(e, x, l, eps, affine, running, Activation::Identity)
    };
    assert!(matches!(
        train(&x, &wrong, EPS, None, None),
        Err(GpuError::Argument {
            op: "train_forward",
            ..
        })
    ));
    assert!(train(&x, &ChannelLayout { n: 0, ..l }, EPS, None, None).is_err());
    assert!(train(&x, &l, f32::NAN, None, None).is_err());
    assert!(train(&x, &l, -1.0, None, None).is_err());
    let single = ChannelLayout { n: 1, c: 12, hw: 1 };
    assert!(train(&x, &single, EPS, None, None).is_err());
    assert!(train(&x, &l, EPS, Some((&three, &two)), None).is_err());
    let running = |mean, var, momentum| {
        Some(Running {
            mean,
            var,
            momentum,
        })
    };
    assert!(train(&x, &l, EPS, None, running(&two, &three, 0.1)).is_err());
    assert!(train(&x, &l, EPS, None, running(&three, &two, 0.1)).is_err());
    assert!(train(&x, &l, EPS, None, running(&three, &other, 1.5)).is_err());
    assert!(train(&x, &l, EPS, None, running(&three, &other, 0.5)).is_ok());
    assert!(ops::eval_coefficients(e, &three, &three, f32::INFINITY, None).is_err());
    assert!(ops::eval_coefficients(e, &three, &two, EPS, None).is_err());
    assert!(ops::eval_coefficients(e, &three, &three, EPS, Some((&two, &three))).is_err());

    let stats = train(&x, &l, EPS, None, None).unwrap();
    let norm = stats.normalizer();
    assert!(ops::scale_shift(e, &x, &l, &three, Some(&two), Activation::Identity).is_err());
    assert!(ops::scale_shift(e, &x, &l, &two, None, Activation::Identity).is_err());
    assert!(ops::scale_shift(e, &x, &wrong, &three, Some(&three), Activation::Identity).is_err());
    let grad = |dy, relu_out| OutputGrad { dy, relu_out };
    assert!(ops::channel_grad_sums(e, &x, grad(&three, None), &l, norm).is_err());
    assert!(ops::channel_grad_sums(e, &x, grad(&x, Some(&three)), &l, norm).is_err());
    assert!(ops::channel_grad_sums(e, &x, grad(&x, Some(&x)), &l, norm).is_ok());
    assert!(ops::train_backward(e, &x, grad(&x, None), &l, norm, &two, false).is_err());
    assert!(ops::train_backward(e, &x, grad(&three, None), &l, norm, &three, false).is_err());
    assert!(ops::train_backward(e, &x, grad(&x, Some(&two)), &l, norm, &three, false).is_err());

    // The mixed op: lengths, counts, the weights' run, one momentum, the statistics' length.
    let w = e.to_device(&[0.5f32; 9]).unwrap();
    let run = WeightRun {
        weights: &w,
        offset: 0,
    };
    let forward = |inputs: &[MixedInput<'_>], run| ops::mixed_sum_forward(e, inputs, run, &l, EPS);
    let norm_x = MixedInput::Normalized(&x, None);
    assert!(forward(&[norm_x, MixedInput::Plain(&x)], run).is_ok());
    assert!(forward(&[], run).is_err());
    assert!(forward(&[norm_x; 9], run).is_err());
    assert!(forward(&[norm_x, MixedInput::Plain(&three)], run).is_err());
    let late = WeightRun { offset: 8, ..run };
    assert!(forward(&[norm_x, norm_x], late).is_err());
    let with =
        |momentum| MixedInput::Normalized(&x, running(&three, &other, momentum).unwrap().into());
    assert!(forward(&[with(0.1), with(0.1)], run).is_ok());
    assert!(forward(&[with(0.1), with(0.2)], run).is_err());
    assert!(forward(&[with(1.5)], run).is_err());
    let single_x = e.to_device(&[1.0f32; 12]).unwrap();
    assert!(
        ops::mixed_sum_forward(
            e,
            &[MixedInput::Normalized(&single_x, None)],
            run,
            &single,
            EPS
        )
        .is_err()
    );
    assert!(ops::mixed_sum_forward(e, &[MixedInput::Plain(&single_x)], run, &single, EPS).is_ok());
    let stats = e.to_device(&[0.5f32; 12]).unwrap();
    let xs = [&x, &x];
    let terms = |normalized, stats| MixedTerms {
        xs: &xs,
        normalized,
        stats,
        train: true,
    };
    let backward = |terms, needs: &[bool]| ops::mixed_input_backward(e, &x, run, terms, &l, needs);
    assert!(backward(terms(&[true, false], &stats), &[true, true]).is_ok());
    assert!(backward(terms(&[true], &stats), &[true, true]).is_err());
    assert!(backward(terms(&[true, false], &three), &[true, true]).is_err());
    assert!(backward(terms(&[true, false], &stats), &[true]).is_err());
    assert!(ops::mixed_weight_backward(e, &x, run, terms(&[true, false], &stats), &l).is_ok());
    assert!(ops::mixed_weight_backward(e, &x, run, terms(&[true, false], &three), &l).is_err());
    assert!(ops::mixed_weight_backward(e, &three, run, terms(&[true, false], &stats), &l).is_err());
}
