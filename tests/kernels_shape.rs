//! Every kernel of `kernels/shape.cu`, run through the GPU ops of `darts::device::gpu::shape`,
//! against the CPU reference `darts::device::cpu::shape` (and `Tensor::zeros` for the zero op): on
//! the emulator always, and on CUDA when this machine has a driver and the build has PTX
//! (otherwise that test says it skipped). The windows include FactorizedReduce's `x[:, :, 1:, 1:]`,
//! channel slices, windows that merge to one run or keep four dimensions, and ranks 1 to 6; the
//! concatenations join up to four inputs of different sizes. The kernels only move elements, so
//! every result must have the CPU's bits. Every device allocation starts as NaN, so an output
//! element a kernel fails to write shows up.

use std::ops::Range;

mod common;

use common::gpu::{Bits, check, cpu_reference_tests, random};
use darts::Tensor;
use darts::device::cpu::shape as reference;
use darts::device::gpu::shape as ops;
use darts::device::gpu::{DeviceBuffer, EmuExecutor, Executor, GpuError, KernelId};

/// The kernels this file launches. Each backend's test checks that it launched exactly these,
/// and `tests/kernel_coverage.rs` checks that every kernel of the build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::ShapeFillFwdF32,
    KernelId::ShapeSliceFwdF32,
    KernelId::ShapeSliceBwdF32,
];

/// (shape, window): each slice case.
type SliceCase = (&'static [usize], &'static [Range<usize>]);

const SLICES: &[SliceCase] = &[
    // FactorizedReduce's shifted slice x[:, :, 1:, 1:] of NCHW.
    (&[2, 3, 5, 7], &[0..2, 0..3, 1..5, 1..7]),
    // Channel slices x[:, a..b] of NCHW: the first, a middle and the last channels.
    (&[3, 5, 4, 4], &[0..3, 0..1, 0..4, 0..4]),
    (&[2, 8, 3, 5], &[0..2, 2..5, 0..3, 0..5]),
    (&[3, 5, 4, 4], &[0..3, 4..5, 0..4, 0..4]),
    // The whole tensor, and one element of it.
    (&[2, 3, 5, 7], &[0..2, 0..3, 0..5, 0..7]),
    (&[2, 3, 5, 7], &[1..2, 2..3, 4..5, 6..7]),
    // A window cut in every dimension: four dimensions after merging.
    (&[3, 4, 7, 9], &[1..3, 1..3, 2..6, 3..8]),
    // Rank 1, 2 and 3, with windows longer than a block.
    (&[1000], &[Range { start: 3, end: 700 }]),
    (&[33, 31], &[1..32, 0..31]),
    (&[5, 7, 33], &[2..3, 1..6, 0..33]),
    // Rank 5 and 6, which merge to four dimensions or fewer.
    (&[2, 3, 4, 5, 6], &[0..2, 1..3, 0..4, 2..4, 1..5]),
    (&[1, 2, 1, 3, 1, 5], &[0..1, 1..2, 0..1, 0..3, 0..1, 1..4]),
];

/// (sizes along the concatenated dimension, outer, inner): each concatenation case.
type ConcatCase = (&'static [usize], usize, usize);

const CONCATS: &[ConcatCase] = &[
    // Four NCHW tensors [2, c, 3, 5] joined along the channels, as a DARTS cell's output.
    (&[1, 3, 2, 5], 2, 15),
    // Along the first dimension (outer = 1), and along the last (inner = 1).
    (&[3, 1, 2], 1, 37),
    (&[7, 33, 1], 5, 1),
    // One input.
    (&[4], 3, 7),
];

/// Runs every shape GPU op on every case on `e` and compares with the CPU.
fn check_against_cpu(e: &dyn Executor) {
    for (case, &(shape, ranges)) in SLICES.iter().enumerate() {
        let what = format!("{shape:?}{ranges:?}");
        let x = random(shape.iter().product(), case as u64);
        let got = ops::slice(e, &e.to_device(&x).unwrap(), shape, ranges).unwrap();
        let want = reference::slice(&x, shape, ranges);
        check(e, &format!("slice of {what}"), &got, &want, Bits);

        let dy = random(want.len(), 100 + case as u64);
        let got = ops::slice_backward(e, &e.to_device(&dy).unwrap(), shape, ranges).unwrap();
        let want = reference::slice_backward(&dy, shape, ranges);
        check(e, &format!("slice_backward of {what}"), &got, &want, Bits);
    }

    for (case, &(sizes, outer, inner)) in CONCATS.iter().enumerate() {
        let xs: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| random(outer * s * inner, 200 + 10 * case as u64 + i as u64))
            .collect();
        let buffers: Vec<DeviceBuffer<f32>> = xs.iter().map(|x| e.to_device(x).unwrap()).collect();
        let refs: Vec<&DeviceBuffer<f32>> = buffers.iter().collect();
        let slices: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let got = ops::concat(e, &refs, sizes, outer, inner).unwrap();
        let want = reference::concat(&slices, sizes, outer, inner);
        check(
            e,
            &format!("concat of {sizes:?} × [{outer}, _, {inner}]"),
            &got,
            &want,
            Bits,
        );
    }

    // The zero op of a [2, 3, 7, 9] input with stride 2, and fills of other values and lengths.
    let zeros = Tensor::zeros(&[2, 3, 4, 5]).unwrap();
    let got = ops::fill(e, zeros.numel(), 0.0).unwrap();
    check(e, "fill with zeros", &got, zeros.data(), Bits);
    for (len, value) in [(1, -0.0), (257, 1.5), (4099, f32::NEG_INFINITY)] {
        let got = ops::fill(e, len, value).unwrap();
        check(
            e,
            &format!("fill of {len} with {value}"),
            &got,
            &vec![value; len],
            Bits,
        );
    }
}

cpu_reference_tests!(check_against_cpu, COVERED);

#[test]
fn bad_arguments_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let x = e.to_device(&[1.0f32; 24]).unwrap();
    let six = e.to_device(&[1.0f32; 6]).unwrap();
    let is_argument = |r: Result<DeviceBuffer<f32>, GpuError>, op: &str| matches!(r, Err(GpuError::Argument { op: o, .. }) if o == op);
    let shape: &[usize] = &[2, 3, 4];
    // Too few ranges, an empty range, a range past the end, x of the wrong length.
    assert!(is_argument(
        ops::slice(e, &x, shape, &[0..2, 0..3]),
        "slice"
    ));
    assert!(is_argument(
        ops::slice(e, &x, shape, &[0..2, 1..1, 0..4]),
        "slice"
    ));
    assert!(is_argument(
        ops::slice(e, &x, shape, &[0..2, 0..3, 2..5]),
        "slice"
    ));
    assert!(is_argument(
        ops::slice(e, &six, shape, &[0..1, 0..3, 0..2]),
        "slice"
    ));
    assert!(is_argument(ops::slice(e, &x, &[], &[]), "slice"));
    // dy must hold the window's elements.
    let backward = ops::slice_backward(e, &x, shape, &[0..1, 0..3, 0..2]);
    assert!(is_argument(backward, "slice_backward"));
    // A window that keeps five dimensions after merging is more than the kernels take.
    let (big, small) = (e.to_device(&[1.0f32; 243]), e.to_device(&[1.0f32; 32]));
    let five = [1..3, 1..3, 1..3, 1..3, 1..3];
    assert!(is_argument(
        ops::slice(e, &big.unwrap(), &[3; 5], &five),
        "slice"
    ));
    let backward = ops::slice_backward(e, &small.unwrap(), &[3; 5], &five);
    assert!(is_argument(backward, "slice_backward"));
    // Sizes that do not match the inputs, or their count; an empty input list.
    assert!(is_argument(
        ops::concat(e, &[&x, &six], &[4, 2], 1, 3),
        "concat"
    ));
    assert!(is_argument(
        ops::concat(e, &[&x, &six], &[4], 2, 3),
        "concat"
    ));
    assert!(is_argument(ops::concat(e, &[], &[], 1, 1), "concat"));
    assert!(is_argument(ops::concat(e, &[&six], &[6], 1, 0), "concat"));
    assert!(is_argument(ops::fill(e, 0, 0.0), "fill"));
}
