//! Every kernel of `kernels/elementwise.cu`, run through the GPU ops of
//! `darts::device::gpu::elementwise`, against the CPU reference: on the emulator always, and on
//! CUDA when this machine has a driver and the build has PTX (otherwise that test says it
//! skipped). Inputs are random, of sizes that are not multiples of the block size; every device
//! allocation starts as NaN, so an output element a kernel fails to write shows up.

mod common;

use common::gpu::{EXACT, Tolerance, check, cpu_reference_tests, normal, plant_extremes};
use darts::device::cpu::{self, elementwise as reference};
use darts::device::gpu::elementwise as ops;
use darts::device::gpu::{EmuExecutor, Executor, GpuError, KernelArg, KernelId, LaunchConfig};

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::ElementwiseReluFwdF32,
    KernelId::ElementwiseReluBwdF32,
    KernelId::ElementwiseTanhFwdF32,
    KernelId::ElementwiseTanhBwdF32,
    KernelId::ElementwiseSigmoidFwdF32,
    KernelId::ElementwiseSigmoidBwdF32,
    KernelId::ElementwiseAddFwdF32,
    KernelId::ElementwiseSubFwdF32,
    KernelId::ElementwiseMulFwdF32,
    KernelId::ElementwiseScaleFwdF32,
    KernelId::ElementwiseLincombFwdF32,
    KernelId::ElementwiseWeightedSumFwdF32,
    KernelId::ElementwiseWeightedSumInputBwdF32,
    KernelId::ElementwiseWeightedSumWeightPartialBwdF32,
    KernelId::ElementwiseWeightedSumWeightFinalBwdF32,
];

/// Element counts: 1, around a warp, around a block of 256, and a few thousand.
const SIZES: [usize; 6] = [1, 31, 33, 257, 1000, 4099];

/// For kernels calling `tanhf`/`expf`, which differ between CUDA and the host libm by an ulp or
/// two.
const TRANSCENDENTAL: Tolerance = Tolerance {
    atol: 1e-6,
    eps: 4.0 * f32::EPSILON,
};

/// For the weight gradient: summed in f64 in another order than the CPU, then rounded to f32.
const REDUCTION: Tolerance = Tolerance {
    atol: 1e-6,
    eps: 2.0 * f32::EPSILON,
};

/// Normal data times 4 (both branches of sigmoid, saturated tanh), with ±90 planted in longer
/// inputs, where e^90 overflows f32 and a careless sigmoid gives NaN.
fn random(n: usize, seed: u64) -> Vec<f32> {
    plant_extremes(normal(n, 4.0, seed), 90.0)
}

/// Runs every elementwise GPU op at every size on `exec` and compares with the CPU.
fn check_against_cpu(e: &dyn Executor) {
    for (case, &n) in SIZES.iter().enumerate() {
        let seed = 100 * case as u64;
        let (x, b, dy) = (random(n, seed), random(n, seed + 1), random(n, seed + 2));
        let (dx, db, ddy) = (
            e.to_device(&x).unwrap(),
            e.to_device(&b).unwrap(),
            e.to_device(&dy).unwrap(),
        );

        check(
            e,
            "relu",
            &ops::relu(e, &dx).unwrap(),
            &reference::relu(&x),
            EXACT,
        );
        let want = reference::relu_backward(&x, &dy);
        check(
            e,
            "relu_backward",
            &ops::relu_backward(e, &dx, &ddy).unwrap(),
            &want,
            EXACT,
        );

        let t = reference::tanh(&x);
        check(e, "tanh", &ops::tanh(e, &dx).unwrap(), &t, TRANSCENDENTAL);
        let dt = e.to_device(&t).unwrap();
        let want = reference::tanh_backward(&t, &dy);
        check(
            e,
            "tanh_backward",
            &ops::tanh_backward(e, &dt, &ddy).unwrap(),
            &want,
            EXACT,
        );

        let s = reference::sigmoid(&x);
        check(
            e,
            "sigmoid",
            &ops::sigmoid(e, &dx).unwrap(),
            &s,
            TRANSCENDENTAL,
        );
        let ds = e.to_device(&s).unwrap();
        let want = reference::sigmoid_backward(&s, &dy);
        check(
            e,
            "sigmoid_backward",
            &ops::sigmoid_backward(e, &ds, &ddy).unwrap(),
            &want,
            EXACT,
        );

        check(
            e,
            "add",
            &ops::add(e, &dx, &db).unwrap(),
            &reference::add(&x, &b),
            EXACT,
        );
        check(
            e,
            "sub",
            &ops::sub(e, &dx, &db).unwrap(),
            &reference::sub(&x, &b),
            EXACT,
        );
        check(
            e,
            "mul",
            &ops::mul(e, &dx, &db).unwrap(),
            &reference::mul(&x, &b),
            EXACT,
        );
        let want = reference::scale(&x, -1.7);
        check(e, "scale", &ops::scale(e, &dx, -1.7).unwrap(), &want, EXACT);
        // Coefficients whose products round (0.1 is inexact): an fma would show.
        let want = reference::lincomb(0.1, &x, -0.3, &b);
        let got = ops::lincomb(e, 0.1, &dx, -0.3, &db).unwrap();
        check(e, "lincomb", &got, &want, EXACT);

        // The mixed op over k candidates (k = 1, 3 and 8, as in a DARTS edge).
        let k = [1, 3, 8][case % 3];
        let xs: Vec<Vec<f32>> = (0..k).map(|j| random(n, seed + 10 + j as u64)).collect();
        let weights = random(k, seed + 3);
        let flat: Vec<f32> = xs.concat();
        let (dxs, dw) = (e.to_device(&flat).unwrap(), e.to_device(&weights).unwrap());
        let slices: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let want = reference::weighted_sum(&slices, &weights);
        check(
            e,
            "weighted_sum",
            &ops::weighted_sum(e, &dxs, &dw).unwrap(),
            &want,
            EXACT,
        );
        let want: Vec<f32> = weights
            .iter()
            .flat_map(|&w| dy.iter().map(move |g| g * w))
            .collect();
        let got = ops::weighted_sum_backward_inputs(e, &ddy, &dw).unwrap();
        check(e, "weighted_sum_backward_inputs", &got, &want, EXACT);
        let want: Vec<f32> = xs.iter().map(|x| cpu::dot_f64(&dy, x) as f32).collect();
        let got = ops::weighted_sum_backward_weights(e, &ddy, &dxs).unwrap();
        check(e, "weighted_sum_backward_weights", &got, &want, REDUCTION);
    }
}

cpu_reference_tests!(check_against_cpu, COVERED);

/// The weight gradient twice on the same data, with many partial sums per weight: the same bits.
#[test]
fn weight_gradient_is_deterministic() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let (n, k) = (50_003, 3);
    let dy = e.to_device(&random(n, 7)).unwrap();
    let xs = e.to_device(&random(n * k, 8)).unwrap();
    let first = e
        .to_host(&ops::weighted_sum_backward_weights(e, &dy, &xs).unwrap())
        .unwrap();
    let second = e
        .to_host(&ops::weighted_sum_backward_weights(e, &dy, &xs).unwrap())
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&first), bits(&second));
    assert!(first.iter().all(|v| v.is_finite()), "{first:?}");
}

#[test]
fn wrong_lengths_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let a = e.to_device(&[1.0f32; 5]).unwrap();
    let b = e.to_device(&[1.0f32; 6]).unwrap();
    let two = e.to_device(&[0.5f32; 2]).unwrap();
    assert!(matches!(
        ops::add(e, &a, &b),
        Err(GpuError::Argument { op: "add", .. })
    ));
    assert!(matches!(
        ops::relu_backward(e, &a, &b),
        Err(GpuError::Argument { .. })
    ));
    // 5 elements do not split into 2 candidates, nor 6 channels-and-planes into [?, 2, 2].
    assert!(ops::weighted_sum(e, &a, &two).is_err());
    assert!(ops::weighted_sum_backward_weights(e, &b, &a).is_err());
    assert!(e.to_device::<f32>(&[]).is_err());
}

#[test]
fn launches_that_do_not_fit_the_kernel_are_refused() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let x = e.to_device(&[1.0f32; 4]).unwrap();
    let mut y = e.alloc::<f32>(4).unwrap();
    let kernel = KernelId::ElementwiseReluFwdF32;
    let launch = |config: LaunchConfig, args: &[KernelArg<'_>]| {
        // SAFETY: every launch here is refused before the kernel runs.
        unsafe { e.launch(kernel, config, args) }
    };
    let args = [
        KernelArg::buffer(&x),
        KernelArg::buffer(&y),
        KernelArg::I32(4),
    ];
    let too_big = LaunchConfig::linear(1, 2048);
    assert!(matches!(
        launch(too_big, &args),
        Err(GpuError::BadLaunch { .. })
    ));
    let no_blocks = LaunchConfig::linear(0, 32);
    assert!(matches!(
        launch(no_blocks, &args),
        Err(GpuError::BadLaunch { .. })
    ));
    let ok = LaunchConfig::linear(1, 32);
    assert!(matches!(
        launch(ok, &args[..2]),
        Err(GpuError::BadLaunch { .. })
    ));
    let swapped = [
        KernelArg::buffer(&x),
        KernelArg::I32(4),
        KernelArg::buffer(&y),
    ];
    assert!(matches!(
        launch(ok, &swapped),
        Err(GpuError::BadLaunch { .. })
    ));
    // Only a parameter named `..._or_null` takes a null pointer.
    let null_input = [
        KernelArg::buffer_or_null::<f32>(None),
        KernelArg::buffer(&y),
        KernelArg::I32(4),
    ];
    assert!(matches!(
        launch(ok, &null_input),
        Err(GpuError::BadLaunch { .. })
    ));
    // The same launch with the right arguments runs.
    // SAFETY: relu reads x[0..4) and writes y[0..4), and both hold 4 elements.
    unsafe { darts::device::gpu::kernels::elementwise_relu_fwd_f32(e, ok, &x, &mut y, 4) }.unwrap();
    assert_eq!(e.to_host(&y).unwrap(), vec![1.0; 4]);
}
