//! Every kernel of `kernels/pool.cu`, run through the GPU ops of `darts::device::gpu::pool`,
//! against the CPU reference `darts::device::cpu::pool`: on the emulator always, and on CUDA when
//! this machine has a driver and the build has PTX (otherwise that test says it skipped). The
//! geometries are DARTS' 3x3 pools with stride 1 and 2, a 2x2 stride-2 pool, windows without
//! padding, and 1x1 images; max pooling sees ties, NaNs and −inf. Every device allocation starts
//! as NaN, so an output element a kernel fails to write shows up.

mod common;

use common::gpu::{self, Criterion, Tolerance, check, cpu_reference_tests, random};
use darts::device::cpu::pool::{self as reference, PoolGeometry};
use darts::device::gpu::pool as ops;
use darts::device::gpu::{DeviceBuffer, EmuExecutor, Executor, GpuError, KernelId};

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::PoolMaxAvgFwdF32,
    KernelId::PoolMaxAvgBwdF32,
    KernelId::PoolGlobalAvgFwdF32,
    KernelId::PoolGlobalAvgBwdF32,
];

/// A [`Tolerance`] under which NaN matches only NaN, and an infinity itself: max pooling passes
/// both through.
#[derive(Clone, Copy)]
struct PoolTolerance(Tolerance);

impl Criterion for PoolTolerance {
    fn accepts(self, got: f32, expected: f32) -> bool {
        if got.is_nan() || expected.is_nan() {
            got.is_nan() && expected.is_nan()
        } else {
            got == expected || self.0.accepts(got, expected)
        }
    }
}

/// For kernels that do the CPU's float operations in the CPU's order: the values must agree.
const EXACT: PoolTolerance = PoolTolerance(gpu::EXACT);

/// For global average pooling: summed in f64 in another order than the CPU, then rounded once.
const REDUCTION: PoolTolerance = PoolTolerance(Tolerance {
    atol: 1e-7,
    eps: f32::EPSILON,
});

/// (N, C, H, W, kernel, stride, padding).
const CASES: [(usize, usize, usize, usize, usize, usize, usize); 7] = [
    (3, 5, 7, 9, 3, 1, 1),
    (3, 5, 7, 9, 3, 2, 1),
    (3, 5, 7, 9, 2, 2, 0),
    (2, 3, 9, 7, 3, 2, 0),
    (1, 2, 8, 5, 1, 1, 0),
    (2, 3, 1, 1, 3, 1, 1),
    (2, 3, 1, 1, 1, 1, 0),
];

/// Input for max pooling: values on a coarse grid (so windows hold ties), a few NaNs and −infs,
/// and the last plane all −inf (windows whose maximum is −inf, and padding that ties with it).
fn max_pool_input(g: &PoolGeometry, seed: u64) -> Vec<f32> {
    let plane = g.h * g.w;
    let mut x: Vec<f32> = random(g.planes * plane, seed)
        .into_iter()
        .map(|v| (2.0 * v).round() / 2.0)
        .collect();
    let n = x.len();
    if n > 10 {
        for i in [n / 7, n / 3, n / 3 + 1, n / 2 + 3] {
            x[i] = f32::NAN;
        }
        for i in [n / 5, n / 4, n / 2] {
            x[i] = f32::NEG_INFINITY;
        }
    }
    x[n - plane..].fill(f32::NEG_INFINITY);
    x
}

/// Runs every pooling GPU op on every geometry of [`CASES`] on `e` and compares with the CPU.
fn check_against_cpu(e: &dyn Executor) {
    for (case, &(n, c, h, w, kernel, stride, padding)) in CASES.iter().enumerate() {
        let g = PoolGeometry {
            planes: n * c,
            h,
            w,
            kernel,
            stride,
            padding,
        };
        let what = |op: &str| format!("{op} {n}x{c}x{h}x{w} k{kernel} s{stride} p{padding}");
        let seed = 100 * case as u64;
        let out_len = g.planes * g.out_h() * g.out_w();
        let dy = random(out_len, seed + 1);
        let ddy = e.to_device(&dy).unwrap();

        let x = max_pool_input(&g, seed);
        let (want_y, want_argmax) = reference::max_pool2d(&x, &g);
        let (y, argmax) = ops::max_pool2d(e, &e.to_device(&x).unwrap(), &g).unwrap();
        check(e, &what("max_pool2d"), &y, &want_y, EXACT);
        assert_eq!(
            e.to_host(&argmax).unwrap(),
            want_argmax,
            "{} on {}",
            what("max_pool2d argmax"),
            e.describe()
        );
        let want = reference::max_pool2d_backward(&dy, &want_argmax, &g);
        let got = ops::max_pool2d_backward(e, &ddy, &argmax, &g).unwrap();
        check(e, &what("max_pool2d_backward"), &got, &want, EXACT);

        let x = random(g.planes * h * w, seed + 2);
        let want = reference::avg_pool2d(&x, &g);
        let got = ops::avg_pool2d(e, &e.to_device(&x).unwrap(), &g).unwrap();
        check(e, &what("avg_pool2d"), &got, &want, EXACT);
        let want = reference::avg_pool2d_backward(&dy, &g);
        let got = ops::avg_pool2d_backward(e, &ddy, &g).unwrap();
        check(e, &what("avg_pool2d_backward"), &got, &want, EXACT);

        // Both pools of one input in one launch each way (a DARTS edge's), against the CPU.
        let x = max_pool_input(&g, seed + 5);
        let (want_max, want_argmax) = reference::max_pool2d(&x, &g);
        let want_avg = reference::avg_pool2d(&x, &g);
        let both = [true, true];
        let pools = ops::max_avg_pool2d(e, &e.to_device(&x).unwrap(), &g, both).unwrap();
        let ((y_max, argmax), y_avg) = (pools.max.unwrap(), pools.avg.unwrap());
        check(e, &what("max_avg_pool2d max"), &y_max, &want_max, EXACT);
        check(e, &what("max_avg_pool2d avg"), &y_avg, &want_avg, EXACT);
        assert_eq!(
            e.to_host(&argmax).unwrap(),
            want_argmax,
            "{}",
            what("argmax")
        );
        let d_avg = e.to_device(&random(out_len, seed + 6)).unwrap();
        let grads = ops::MaxAvgGrads {
            max: Some((&ddy, &argmax)),
            avg: Some(&d_avg),
        };
        let [dx_max, dx_avg] = ops::max_avg_pool2d_backward(e, grads, &g).unwrap();
        let want = reference::max_pool2d_backward(&dy, &want_argmax, &g);
        check(
            e,
            &what("max_avg backward max"),
            &dx_max.unwrap(),
            &want,
            EXACT,
        );
        let want = reference::avg_pool2d_backward(&e.to_host(&d_avg).unwrap(), &g);
        check(
            e,
            &what("max_avg backward avg"),
            &dx_avg.unwrap(),
            &want,
            EXACT,
        );
        let none = ops::MaxAvgGrads {
            max: None,
            avg: None,
        };
        let nothing = ops::max_avg_pool2d_backward(e, none, &g).unwrap();
        assert!(
            nothing.iter().all(Option::is_none),
            "{}",
            what("no gradient")
        );

        let plane = h * w;
        // A mean far from zero, so that the order of the additions matters.
        let x: Vec<f32> = random(g.planes * plane, seed + 3)
            .iter()
            .map(|v| 3.0 + v)
            .collect();
        let want = reference::global_avg_pool(&x, plane);
        let got = ops::global_avg_pool(e, &e.to_device(&x).unwrap(), plane).unwrap();
        check(e, &what("global_avg_pool"), &got, &want, REDUCTION);
        let dp = random(g.planes, seed + 4);
        let want = reference::global_avg_pool_backward(&dp, plane);
        let got = ops::global_avg_pool_backward(e, &e.to_device(&dp).unwrap(), plane).unwrap();
        check(e, &what("global_avg_pool_backward"), &got, &want, EXACT);
    }
    // Global average pooling over planes larger than a block (1221 elements, 256 threads).
    let (planes, plane) = (3, 33 * 37);
    let x = random(planes * plane, 7);
    let want = reference::global_avg_pool(&x, plane);
    let got = ops::global_avg_pool(e, &e.to_device(&x).unwrap(), plane).unwrap();
    check(
        e,
        "global_avg_pool 3 planes of 1221",
        &got,
        &want,
        REDUCTION,
    );
}

cpu_reference_tests!(check_against_cpu, COVERED);

/// The reduction and the gather twice on the same data: the same bits.
#[test]
fn reruns_give_the_same_bits() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let bits = |b: &DeviceBuffer<f32>| -> Vec<u32> {
        e.to_host(b).unwrap().iter().map(|v| v.to_bits()).collect()
    };
    let (planes, plane) = (5, 33 * 31);
    let x = e.to_device(&random(planes * plane, 11)).unwrap();
    let first = bits(&ops::global_avg_pool(e, &x, plane).unwrap());
    assert_eq!(first, bits(&ops::global_avg_pool(e, &x, plane).unwrap()));

    let g = PoolGeometry {
        planes: 2,
        h: 9,
        w: 7,
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let dy = e.to_device(&random(2 * 9 * 7, 12)).unwrap();
    let first = bits(&ops::avg_pool2d_backward(e, &dy, &g).unwrap());
    assert_eq!(first, bits(&ops::avg_pool2d_backward(e, &dy, &g).unwrap()));
}

#[test]
fn bad_geometries_and_lengths_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let good = PoolGeometry {
        planes: 2,
        h: 5,
        w: 4,
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let x = e.to_device(&[1.0f32; 40]).unwrap();
    assert!(ops::max_pool2d(e, &x, &good).is_ok());
    let bad = [
        PoolGeometry { kernel: 0, ..good },
        PoolGeometry { stride: 0, ..good },
        PoolGeometry { padding: 2, ..good },
        PoolGeometry {
            kernel: 7,
            padding: 0,
            ..good
        },
        PoolGeometry { planes: 0, ..good },
        PoolGeometry { planes: 3, ..good },
    ];
    for g in bad {
        assert!(
            matches!(
                ops::max_pool2d(e, &x, &g),
                Err(GpuError::Argument {
                    op: "max_pool2d",
                    ..
                })
            ),
            "{g:?}"
        );
        assert!(ops::avg_pool2d(e, &x, &g).is_err(), "{g:?}");
    }
    // The 2 x 3 x 2 outputs of `good` are 12 elements: a gradient of 40 does not fit.
    let argmax = e.to_device(&[0u32; 12]).unwrap();
    assert!(ops::max_pool2d_backward(e, &x, &argmax, &good).is_err());
    assert!(ops::avg_pool2d_backward(e, &x, &good).is_err());
    assert!(ops::global_avg_pool(e, &x, 7).is_err());
    assert!(ops::global_avg_pool(e, &x, 0).is_err());
    assert!(ops::global_avg_pool_backward(e, &x, 0).is_err());
}
