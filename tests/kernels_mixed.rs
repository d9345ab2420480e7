//! Every kernel of `kernels/mixed.cu`, run through the GPU ops of `darts::device::gpu::mixed`,
//! against the CPU reference (`device::cpu::elementwise::{weighted_sum, sum, scale}`,
//! `device::cpu::dot_f64`):
//! on the emulator always, and on CUDA when this machine has a driver and the build has PTX
//! (otherwise that test says it skipped). Inputs are random, of sizes that are not multiples of
//! the block size, with 1, 2, 5 and 8 candidates; every device allocation starts as NaN, so an
//! output element a kernel fails to write shows up.

mod common;

use common::gpu::{EXACT, Tolerance, check, cpu_reference_tests, normal};
use darts::device::cpu::{self, elementwise as reference};
use darts::device::gpu::mixed::{self as ops, MAX_CANDIDATES, WeightRun};
use darts::device::gpu::{DeviceBuffer, EmuExecutor, Executor, GpuError, KernelId, elementwise};

/// The kernels of this family this file launches. Each backend's test checks that it launched
/// exactly these and [`SHARED`], and `tests/kernel_coverage.rs` checks that every kernel of the
/// build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::MixedSumFwdF32,
    KernelId::MixedSumWeightPartialBwdF32,
    KernelId::MixedScaleBwdF32,
];

/// The weight gradient's second pass, which the mixed family shares with the stacked op.
const SHARED: KernelId = KernelId::ElementwiseWeightedSumWeightFinalBwdF32;

/// Element counts: 1, around a warp, around a block of 256, and a few thousand.
const SIZES: [usize; 6] = [1, 31, 33, 257, 1000, 4099];

/// Candidate counts: one, two, an odd count, and all eight primitives of a DARTS edge.
const COUNTS: [usize; 4] = [1, 2, 5, 8];

/// For the weight gradient: summed in f64 in another order than the CPU, then rounded to f32.
const REDUCTION: Tolerance = Tolerance {
    atol: 1e-6,
    eps: 2.0 * f32::EPSILON,
};

/// Normal data times 4.
fn random(n: usize, seed: u64) -> Vec<f32> {
    normal(n, 4.0, seed)
}

/// `count` random candidates of `n` elements, on the host and on `exec`.
fn candidates(
    exec: &dyn Executor,
    count: usize,
    n: usize,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<DeviceBuffer<f32>>) {
    let xs: Vec<Vec<f32>> = (0..count).map(|j| random(n, seed + j as u64)).collect();
    let on_device = xs.iter().map(|x| exec.to_device(x).unwrap()).collect();
    (xs, on_device)
}

/// All of `weights`, from its first value.
fn whole(weights: &DeviceBuffer<f32>) -> WeightRun<'_> {
    WeightRun { weights, offset: 0 }
}

/// Where the weights lie in their buffer in [`check_against_cpu`]: after 3 other values and
/// before 2 more, as a DARTS edge's weights lie in a row of the architecture weights.
const BEFORE: usize = 3;
const AFTER: usize = 2;

/// Runs the mixed op forward and its weight gradient at every size and candidate count on `e`
/// and compares with the CPU.
fn check_against_cpu(e: &dyn Executor) {
    for (case, &n) in SIZES.iter().enumerate() {
        for &k in &COUNTS {
            let seed = 100 * case as u64 + 10 * k as u64;
            let (xs, on_device) = candidates(e, k, n, seed);
            let refs: Vec<&DeviceBuffer<f32>> = on_device.iter().collect();
            let slices: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
            let (row, dy) = (random(BEFORE + k + AFTER, seed + 8), random(n, seed + 9));
            let weights = &row[BEFORE..BEFORE + k];
            let (drow, ddy) = (e.to_device(&row).unwrap(), e.to_device(&dy).unwrap());
            let run = WeightRun {
                weights: &drow,
                offset: BEFORE,
            };

            let want = reference::weighted_sum(&slices, weights);
            let got = ops::mixed_forward(e, &refs, run).unwrap();
            check(e, &format!("mixed_forward, k = {k}"), &got, &want, EXACT);
            // Without weights: the plain sum, with the bits of adding two at a time.
            let want = reference::sum(&slices);
            let pairwise = slices[1..]
                .iter()
                .fold(slices[0].to_vec(), |acc, x| reference::add(&acc, x));
            assert_eq!(want, pairwise, "the CPU's sum of {k} adds two at a time");
            let got = ops::sum(e, &refs).unwrap();
            check(e, &format!("sum, k = {k}"), &got, &want, EXACT);

            // The weights' gradient has the shape of their buffer, zero outside the run.
            let mut want = vec![0.0; row.len()];
            for (g, x) in want[BEFORE..].iter_mut().zip(&xs) {
                *g = cpu::dot_f64(&dy, x) as f32;
            }
            let got = ops::mixed_backward_weights(e, &ddy, &refs, run).unwrap();
            let what = format!("mixed_backward_weights, k = {k}");
            check(e, &what, &got, &want, REDUCTION);

            // The input gradients: of every candidate, of every other one, and (for eight) of
            // ten picks, which take two launches.
            let mut pick_lists = vec![(0..k).collect::<Vec<_>>(), (0..k).step_by(2).collect()];
            if k == MAX_CANDIDATES {
                pick_lists.push((0..k).chain([7, 3]).collect());
            }
            for picks in pick_lists {
                let got = ops::mixed_backward_inputs(e, &ddy, run, k, &picks).unwrap();
                assert_eq!(got.len(), picks.len());
                for (g, &j) in got.iter().zip(&picks) {
                    let what = format!("mixed_backward_inputs, k = {k}, weight {j} of {picks:?}");
                    check(e, &what, g, &reference::scale(&dy, weights[j]), EXACT);
                }
            }
            assert!(ops::mixed_backward_inputs(e, &ddy, run, k, &[k]).is_err());
        }
    }
}

cpu_reference_tests!(check_against_cpu, COVERED, SHARED);

fn bits(exec: &dyn Executor, buffer: &DeviceBuffer<f32>) -> Vec<u32> {
    let values = exec.to_host(buffer).unwrap();
    assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
    values.iter().map(|v| v.to_bits()).collect()
}

/// The weight gradient twice on the same data, with many partial sums per weight: the same bits;
/// and both ops give the same bits as the stacked `elementwise` version on the same candidates.
#[test]
fn weight_gradient_is_deterministic_and_matches_the_stacked_op() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let (n, k) = (20_011, 5);
    let (xs, on_device) = candidates(e, k, n, 7);
    let refs: Vec<&DeviceBuffer<f32>> = on_device.iter().collect();
    let dy = e.to_device(&random(n, 1)).unwrap();
    let weights = e.to_device(&random(k, 2)).unwrap();
    let run = whole(&weights);
    let first = bits(e, &ops::mixed_backward_weights(e, &dy, &refs, run).unwrap());
    let second = bits(e, &ops::mixed_backward_weights(e, &dy, &refs, run).unwrap());
    assert_eq!(first, second);

    let stacked = e.to_device(&xs.concat()).unwrap();
    let grad = elementwise::weighted_sum_backward_weights(e, &dy, &stacked).unwrap();
    assert_eq!(
        first,
        bits(e, &grad),
        "weight gradient, separate vs stacked"
    );
    let y = ops::mixed_forward(e, &refs, run).unwrap();
    let y_stacked = elementwise::weighted_sum(e, &stacked, &weights).unwrap();
    assert_eq!(
        bits(e, &y),
        bits(e, &y_stacked),
        "forward, separate vs stacked"
    );
}

/// A candidate passed twice is read twice: aliasing pointers are fine for the kernels.
#[test]
fn a_candidate_may_appear_twice() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let x = random(33, 3);
    let (dx, dw) = (
        e.to_device(&x).unwrap(),
        e.to_device(&[0.25f32, 0.5]).unwrap(),
    );
    let got = e
        .to_host(&ops::mixed_forward(e, &[&dx, &dx], whole(&dw)).unwrap())
        .unwrap();
    assert_eq!(got, reference::weighted_sum(&[&x, &x], &[0.25, 0.5]));
}

#[test]
fn wrong_arguments_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let buffer = |n: usize| e.to_device(&vec![0.5f32; n]).unwrap();
    let (a, b, w2) = (buffer(5), buffer(6), buffer(2));
    let nine: Vec<&DeviceBuffer<f32>> = vec![&a; MAX_CANDIDATES + 1];
    let refused = |r: Result<DeviceBuffer<f32>, GpuError>, op: &str| {
        assert!(
            matches!(&r, Err(GpuError::Argument { op: o, .. }) if *o == op),
            "{op}: {r:?}"
        );
    };
    let forward = "mixed_forward";
    let (w8, w9) = (buffer(8), buffer(9));
    // Two weights from position 1 of a buffer of two do not fit.
    let past_the_end = WeightRun {
        weights: &w2,
        offset: 1,
    };
    refused(ops::mixed_forward(e, &[], whole(&w2)), forward);
    refused(ops::mixed_forward(e, &[&a, &b], whole(&w2)), forward);
    refused(ops::mixed_forward(e, &[&a, &a, &a], whole(&w2)), forward);
    refused(ops::mixed_forward(e, &[&a, &a], past_the_end), forward);
    refused(ops::mixed_forward(e, &nine, whole(&w9)), forward);
    assert!(ops::mixed_forward(e, &nine[..MAX_CANDIDATES], whole(&w8)).is_ok());
    let inputs = "mixed_backward_inputs";
    let scaled = |run, count, picks: &[usize]| {
        ops::mixed_backward_inputs(e, &a, run, count, picks).map(|mut g| g.remove(0))
    };
    refused(scaled(past_the_end, 2, &[0]), inputs);
    refused(scaled(whole(&w2), 2, &[2]), inputs);
    refused(scaled(whole(&w9), 9, &[8]), inputs);
    assert!(scaled(whole(&w2), 2, &[1]).is_ok());
    refused(ops::sum(e, &[]), "sum");
    refused(ops::sum(e, &[&a, &b]), "sum");
    refused(ops::sum(e, &nine), "sum");
    assert!(ops::sum(e, &nine[..MAX_CANDIDATES]).is_ok());
    let weights = "mixed_backward_weights";
    refused(ops::mixed_backward_weights(e, &a, &[], whole(&w2)), weights);
    refused(
        ops::mixed_backward_weights(e, &a, &[&a, &b], whole(&w2)),
        weights,
    );
    refused(
        ops::mixed_backward_weights(e, &b, &[&a, &a], whole(&w2)),
        weights,
    );
    refused(
        ops::mixed_backward_weights(e, &a, &[&a, &a], past_the_end),
        weights,
    );
    refused(
        ops::mixed_backward_weights(e, &a, &nine, whole(&w9)),
        weights,
    );
    let eight = &nine[..MAX_CANDIDATES];
    assert!(ops::mixed_backward_weights(e, &a, eight, whole(&w8)).is_ok());
}
