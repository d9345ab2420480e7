//! Every kernel of `kernels/matmul.cu`, run through the GPU ops of `darts::device::gpu::matmul`,
//! against the CPU reference `darts::device::cpu::matmul`: on the emulator always, and on CUDA
//! when this machine has a driver and the build has PTX (otherwise that test says it skipped).
//! Shapes are not multiples of the 64×64 GEMM tile (nor of its 16-deep slab), every transpose
//! combination runs, and every device allocation starts as NaN, so an output element a kernel
//! fails to write shows up. The batched GEMM layouts are exercised by tests/kernels_conv.rs.
//! The TF32 tensor-core GEMM is checked against the CPU's product of the inputs rounded to TF32,
//! which differs from it only in the order of the sums.

mod common;

use common::gpu::{EXACT, Tolerance, check, cpu_reference_tests, random, round_to_tf32};
use darts::device::cpu::matmul::{self as reference, Mat};
use darts::device::gpu::matmul::{self as ops, DeviceMat};
use darts::device::gpu::{
    DeviceBuffer, EmuExecutor, Executor, GemmPrecision, GpuError, KernelId, LaunchConfig, kernels,
};

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::MatmulGemmFwdF32,
    KernelId::MatmulGemmTf32FwdF32,
    KernelId::MatmulGatherRowsFwdF32,
    KernelId::MatmulScatterAddRowsBwdF32,
];

/// GEMM shapes `(m, k, n)`: one element, smaller than a warp, around half a tile with k across two
/// slabs, and several tiles in each direction.
const SHAPES: [(usize, usize, usize); 4] = [(1, 1, 1), (7, 5, 3), (33, 17, 31), (70, 40, 130)];

/// For products: the kernel sums k terms in order (with fma on CUDA), the CPU reference in its own
/// blocked order; inputs are standard normal, so sums stay below ~20 in magnitude.
const PRODUCT: Tolerance = Tolerance {
    atol: 1e-5,
    eps: 1e-5,
};

/// For the TF32 kernel against the CPU's product of the same TF32 inputs: tensor cores add with
/// truncation and no normalisation inside an instruction, a few units in the last place per
/// 8-deep step, where the CPU rounds each add. Inputs that were not rounded to TF32 would be off
/// by ~2^-12 of each term, some 30 times more than this allows at k = 130.
const TF32_PRODUCT: Tolerance = Tolerance {
    atol: 1e-4,
    eps: 1e-4,
};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// An operand stored for a view of `rows × cols`: row-major as is, or (transposed) as the
/// row-major `cols × rows` buffer whose `.t()` is the view.
fn operand(rows: usize, cols: usize, transposed: bool, seed: u64) -> (Vec<f32>, [usize; 2]) {
    let shape = if transposed {
        [cols, rows]
    } else {
        [rows, cols]
    };
    (random(rows * cols, seed), shape)
}

/// The `rows × cols` view of `data` stored as `shape`: the buffer itself, or its transpose.
fn view(data: &[f32], [rows, cols]: [usize; 2], transposed: bool) -> Mat<'_> {
    let mat = Mat::new(data, rows, cols);
    if transposed { mat.t() } else { mat }
}

/// [`view`] on the device.
fn device_view(
    data: &DeviceBuffer<f32>,
    [rows, cols]: [usize; 2],
    transposed: bool,
) -> DeviceMat<'_> {
    let mat = DeviceMat::new(data, rows, cols);
    if transposed { mat.t() } else { mat }
}

/// `A·B + beta·C` for every shape, transpose combination and beta in {0, 0.5} against the CPU,
/// with the executor's GEMM set to `precision` (and left so).
fn check_gemm(e: &dyn Executor, precision: GemmPrecision) {
    e.set_gemm_precision(precision).unwrap();
    // The CPU's inputs: TF32 values for the TF32 kernel, whose only other difference is the
    // order of its float sums.
    let rounded = |x: Vec<f32>| match precision {
        GemmPrecision::F32 => x,
        GemmPrecision::Tf32 => x.into_iter().map(round_to_tf32).collect(),
    };
    for (case, &(m, k, n)) in SHAPES.iter().enumerate() {
        for combo in 0..4 {
            let (ta, tb) = (combo & 1 == 1, combo & 2 == 2);
            let seed = 1000 * case as u64 + 10 * combo as u64;
            let (a, a_shape) = operand(m, k, ta, seed);
            let (b, b_shape) = operand(k, n, tb, seed + 1);
            let c0 = random(m * n, seed + 2);
            let (da, db) = (e.to_device(&a).unwrap(), e.to_device(&b).unwrap());
            for beta in [0.0, 0.5] {
                let mut want = c0.clone();
                let (ra, rb) = (rounded(a.clone()), rounded(b.clone()));
                reference::gemm(
                    view(&ra, a_shape, ta),
                    view(&rb, b_shape, tb),
                    beta,
                    &mut want,
                );
                // beta = 0 must ignore the NaN the fresh buffer holds; beta ≠ 0 reads c0.
                let mut dc = e.alloc::<f32>(m * n).unwrap();
                if beta != 0.0 {
                    e.write(&c0, &mut dc).unwrap();
                }
                let (va, vb) = (device_view(&da, a_shape, ta), device_view(&db, b_shape, tb));
                ops::gemm(e, va, vb, beta, &mut dc).unwrap();
                let what =
                    format!("{precision:?} gemm {m}×{k}×{n} (Aᵀ: {ta}, Bᵀ: {tb}, beta {beta})");
                let tolerance = match precision {
                    GemmPrecision::F32 => PRODUCT,
                    GemmPrecision::Tf32 => TF32_PRODUCT,
                };
                check(e, &what, &dc, &want, tolerance);
            }
        }
    }
}

/// Gather and scatter-add against the CPU, with repeated ids, unused table rows, more ids than a
/// block scans at once (256) and rows wider than a block.
fn check_embedding(e: &dyn Executor) {
    let cases: [(usize, usize, Vec<usize>); 3] = [
        (7, 5, vec![3, 0, 3, 6, 3, 1, 0, 6, 6, 2, 3]),
        (1, 1, vec![0]),
        (3, 300, (0..300).map(|r| (r * r + 1) % 3).collect()),
    ];
    for (vocab, dim, ids) in cases {
        let table = random(vocab * dim, vocab as u64);
        let dy = random(ids.len() * dim, dim as u64);
        let device_ids = ops::upload_ids(e, &ids, vocab).unwrap();
        let dtable = e.to_device(&table).unwrap();
        let got = ops::gather_rows(e, &dtable, dim, &device_ids).unwrap();
        let want = reference::gather_rows(&table, dim, &ids);
        let what = format!("gather_rows (vocab {vocab}, dim {dim})");
        check(e, &what, &got, &want, EXACT);
        let ddy = e.to_device(&dy).unwrap();
        let got = ops::scatter_add_rows(e, &ddy, dim, &device_ids, vocab).unwrap();
        let want = reference::scatter_add_rows(&dy, dim, &ids, vocab);
        let what = format!("scatter_add_rows (vocab {vocab}, dim {dim})");
        check(e, &what, &got, &want, EXACT);
    }
}

fn check_against_cpu(e: &dyn Executor) {
    check_gemm(e, GemmPrecision::Tf32);
    check_gemm(e, GemmPrecision::F32);
    check_embedding(e);
}

/// TF32 rounding as the CPU twin does it: to nearest, ties away from zero, on the 13 dropped
/// mantissa bits; the test compares against it, so it must itself be right.
#[test]
fn tf32_rounding_keeps_ten_mantissa_bits() {
    let ulp = 2f32.powi(-10); // of TF32, at 1.0
    assert_eq!(round_to_tf32(1.0 + ulp * 0.49), 1.0);
    assert_eq!(round_to_tf32(1.0 + ulp * 0.5), 1.0 + ulp); // a tie goes away from zero
    assert_eq!(round_to_tf32(-(1.0 + ulp * 0.5)), -(1.0 + ulp));
    assert_eq!(round_to_tf32(1.0 + ulp * 1.51), 1.0 + 2.0 * ulp);
    assert_eq!(round_to_tf32(f32::INFINITY), f32::INFINITY);
    assert!(round_to_tf32(f32::NAN).is_nan());
    for x in random(1000, 9) {
        let r = round_to_tf32(x);
        assert_eq!(
            r.to_bits() & 0x1fff,
            0,
            "{x} rounds to {r}, with more than 10 mantissa bits"
        );
        assert!(
            (r - x).abs() <= x.abs() * 2f32.powi(-11),
            "{x} rounds to {r}"
        );
    }
}

/// The TF32 GEMM on inputs that are not TF32 values rounds them (the result is the rounded
/// inputs' product, not the float one), and gives the same bits on a second run.
#[test]
fn tf32_gemm_rounds_its_inputs_and_repeats_its_bits() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    e.set_gemm_precision(GemmPrecision::Tf32).unwrap();
    assert_eq!(e.gemm_precision(), GemmPrecision::Tf32);
    let (m, k, n) = (33, 70, 9);
    let (a, b) = (random(m * k, 3), random(k * n, 4));
    let (da, db) = (e.to_device(&a).unwrap(), e.to_device(&b).unwrap());
    let run = || {
        let mut c = e.alloc::<f32>(m * n).unwrap();
        ops::gemm(
            e,
            DeviceMat::new(&da, m, k),
            DeviceMat::new(&db, k, n),
            0.0,
            &mut c,
        )
        .unwrap();
        e.to_host(&c).unwrap()
    };
    let got = run();
    assert_eq!(bits(&got), bits(&run()));
    let mut float = vec![0.0; m * n];
    reference::gemm(Mat::new(&a, m, k), Mat::new(&b, k, n), 0.0, &mut float);
    // Rounding 2k inputs by up to 2^-11 moves a sum of k ~ 70 products far past the tolerance
    // that only the order of the sums needs.
    let off = |(g, f): (&f32, &f32)| (g - f).abs() > PRODUCT.atol + f.abs() * PRODUCT.eps;
    let differs = got.iter().zip(&float).filter(|&p| off(p)).count();
    assert!(
        differs > m * n / 2,
        "only {differs} of {} elements are off the float product: inputs not rounded?",
        m * n
    );
}

cpu_reference_tests!(check_against_cpu, COVERED);

/// The GEMM on a one-block grid (the block walks every tile and both slots of a two-slot launch
/// by its grid-stride loops) gives each slot the bits the op gives it alone on the grid it picks:
/// every element is one thread's sum in k order.
#[test]
fn gemm_is_the_same_on_any_grid_and_in_any_slot() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let (m, k, n) = (70, 40, 130);
    let operands: Vec<_> = (0..2u64)
        .map(|s| {
            let (a, b) = (random(m * k, 1 + 2 * s), random(k * n, 2 + 2 * s));
            (e.to_device(&a).unwrap(), e.to_device(&b).unwrap())
        })
        .collect();
    let planned: Vec<Vec<f32>> = (operands.iter())
        .map(|(da, db)| {
            let mut c = e.alloc::<f32>(m * n).unwrap();
            ops::gemm(
                e,
                DeviceMat::new(da, m, k),
                DeviceMat::new(db, k, n),
                0.0,
                &mut c,
            )
            .unwrap();
            e.to_host(&c).unwrap()
        })
        .collect();
    let mut single = [
        e.alloc::<f32>(m * n).unwrap(),
        e.alloc::<f32>(m * n).unwrap(),
    ];
    let one_block = LaunchConfig {
        grid: [1, 1, 1],
        block: [16, 16, 1],
        shared_bytes: 0,
    };
    let (m_, k_, n_) = (m as i32, k as i32, n as i32);
    let [(a0, b0), (a1, b1)] = [&operands[0], &operands[1]].map(|(a, b)| (a, b));
    let [c0, c1] = &mut single;
    // SAFETY: per slot s < 2, one row-major m×k A, k×n B and m×n C, each holding exactly those
    // elements; a single problem at offset 0. Slots 2 and 3 alias slot 0's inputs and have no
    // output; the kernel reads none of them.
    unsafe {
        kernels::matmul_gemm_fwd_f32(
            e,
            one_block,
            a0,
            a1,
            a0,
            a0,
            b0,
            b1,
            b0,
            b0,
            Some(c0),
            Some(c1),
            None,
            None,
            2,
            m_,
            n_,
            k_,
            k_,
            1,
            n_,
            1,
            0.0,
            1,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        )
    }
    .unwrap();
    for (s, (planned, single)) in planned.iter().zip(&single).enumerate() {
        let single = e.to_host(single).unwrap();
        assert_eq!(bits(planned), bits(&single), "slot {s}");
        assert!(planned.iter().all(|v| v.is_finite()), "slot {s}");
    }
    assert_ne!(bits(&planned[0]), bits(&planned[1]));
}

/// The embedding gradient twice on ids with many repeats: the same bits.
#[test]
fn embedding_gradient_is_deterministic() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let (vocab, dim) = (4, 33);
    let ids: Vec<usize> = (0..517).map(|r| r * 7 % vocab).collect();
    let device_ids = ops::upload_ids(e, &ids, vocab).unwrap();
    let dy = e.to_device(&random(ids.len() * dim, 5)).unwrap();
    let first = ops::scatter_add_rows(e, &dy, dim, &device_ids, vocab).unwrap();
    let second = ops::scatter_add_rows(e, &dy, dim, &device_ids, vocab).unwrap();
    let (first, second) = (e.to_host(&first).unwrap(), e.to_host(&second).unwrap());
    assert_eq!(bits(&first), bits(&second));
    assert!(first.iter().all(|v| v.is_finite()));
}

#[test]
fn wrong_shapes_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let six: DeviceBuffer<f32> = e.to_device(&[1.0f32; 6]).unwrap();
    let mut out = e.alloc::<f32>(4).unwrap();
    let argument = |r: Result<(), GpuError>| matches!(r, Err(GpuError::Argument { .. }));
    // Inner dimensions differ: 2×3 times 2×3.
    let a = DeviceMat::new(&six, 2, 3);
    assert!(argument(ops::gemm(e, a, a, 0.0, &mut out)));
    // The output is not 2×2.
    let mut five = e.alloc::<f32>(5).unwrap();
    assert!(argument(ops::gemm(e, a, a.t(), 0.0, &mut five)));
    // A view larger than its buffer.
    let big = DeviceMat::new(&six, 2, 4);
    let mut eight = e.alloc::<f32>(8).unwrap();
    assert!(argument(ops::gemm(e, big.t(), big, 0.0, &mut eight)));
    // 2×3 times 3×2 fits.
    ops::gemm(e, a, a.t(), 0.0, &mut out).unwrap();
    assert_eq!(e.to_host(&out).unwrap(), vec![3.0; 4]);

    assert!(ops::upload_ids(e, &[0, 3, 1], 3).is_err());
    assert!(ops::upload_ids(e, &[], 3).is_err());
    let ids = ops::upload_ids(e, &[0, 2], 3).unwrap();
    // A table of 6 elements has no rows of 4; dy of 6 is not 2 rows of 2.
    assert!(ops::gather_rows(e, &six, 4, &ids).is_err());
    assert!(ops::gather_rows(e, &six, 0, &ids).is_err());
    assert!(ops::scatter_add_rows(e, &six, 2, &ids, 3).is_err());
    assert!(ops::scatter_add_rows(e, &six, 3, &ids, 0).is_err());
}
