//! Every kernel of `kernels/conv.cu` (and the batched GEMM of `kernels/matmul.cu` in every layout
//! the convolutions use), run through `darts::device::gpu::conv::ConvPlan`, against the CPU
//! reference `darts::device::cpu::conv`: forward, input, weight and bias gradients, on the
//! emulator always, and on CUDA when this machine has a driver and the build has PTX (otherwise
//! that test says it skipped). The geometries are DARTS' (separable and dilated depthwise convs,
//! 1×1 and strided 1×1 convs, the 3×3 stem, the 1×7 / 7×1 pair) plus channel groups, on odd image
//! sizes; every device allocation starts as NaN, so an element a kernel fails to write shows up.
//! The same cases run again with the executor's GEMMs on TF32 tensor cores, on data that TF32
//! represents exactly, so that their results too differ from the CPU's only in the order of sums.

mod common;

use common::gpu::{Tolerance, compare, cpu_reference_tests, random, round_to_tf32};
use darts::device::cpu::conv::{self as reference, ConvGeometry};
use darts::device::gpu::conv::{self, BackwardInputs, ConvPlan};
use darts::device::gpu::{
    ConvWindow, DeviceBuffer, EmuExecutor, Executor, GemmPrecision, GpuError, KernelId,
    LaunchConfig, TestExecutor, kernels,
};
use darts::ops::conv::Conv2dParams;

/// The kernels this file launches. Each backend's test checks that it launched exactly these of
/// the conv family and the GEMM, and `tests/kernel_coverage.rs` checks that every kernel of the
/// build is in such a list.
const COVERED: &[KernelId] = &[
    KernelId::ConvIm2colFwdF32,
    KernelId::ConvCol2imBwdF32,
    KernelId::ConvWeightSumBwdF32,
    KernelId::ConvDepthwiseFwdF32,
    KernelId::ConvDepthwiseBwdF32,
    KernelId::ConvBiasFwdF32,
    KernelId::ConvBiasBwdF32,
];

/// The kernels sum in another order than the CPU reference (and with fma on CUDA): at most a few
/// hundred standard-normal products per output here, so sums stay below ~50 in magnitude.
const SUMS: Tolerance = Tolerance {
    atol: 2e-5,
    eps: 1e-5,
};

/// One test geometry on a batch of 2 images (of 7×9 but for one case).
struct Case {
    name: &'static str,
    c_in: usize,
    c_out: usize,
    kernel: [usize; 2],
    params: Conv2dParams,
    bias: bool,
    input: [usize; 2],
}

impl Case {
    fn geometry(&self) -> ConvGeometry {
        let input = self.input;
        ConvGeometry {
            batch: 2,
            c_in: self.c_in,
            c_out: self.c_out,
            input,
            kernel: self.kernel,
            output: self.params.output_size(input, self.kernel).unwrap(),
            stride: self.params.stride,
            padding: self.params.padding,
            dilation: self.params.dilation,
            groups: self.params.groups,
        }
    }
}

fn params(stride: [usize; 2], padding: [usize; 2], dilation: usize, groups: usize) -> Conv2dParams {
    Conv2dParams {
        stride,
        padding,
        dilation: [dilation; 2],
        groups,
    }
}

fn cases() -> Vec<Case> {
    let case = |name, c_in, c_out, kernel, params, bias| Case {
        name,
        c_in,
        c_out,
        kernel,
        params,
        bias,
        input: [7, 9],
    };
    vec![
        // Enough terms per weight-gradient sum (2·33·31) for the depthwise backward's largest
        // blocks, 256 threads; the 7×9 cases get one warp.
        Case {
            input: [33, 31],
            ..case(
                "sep_conv 3x3 on 33x31 (depthwise)",
                3,
                3,
                [3, 3],
                params([1, 1], [1, 1], 1, 3),
                false,
            )
        },
        case(
            "sep_conv 3x3 (depthwise)",
            5,
            5,
            [3, 3],
            params([1, 1], [1, 1], 1, 5),
            false,
        ),
        case(
            "sep_conv 5x5, stride 2 (depthwise)",
            5,
            5,
            [5, 5],
            params([2, 2], [2, 2], 1, 5),
            false,
        ),
        case(
            "dil_conv 3x3, stride 2 (depthwise)",
            4,
            4,
            [3, 3],
            params([2, 2], [2, 2], 2, 4),
            true,
        ),
        case(
            "dil_conv 5x5 (depthwise)",
            3,
            3,
            [5, 5],
            params([1, 1], [4, 4], 2, 3),
            false,
        ),
        case("3x3 stem", 3, 5, [3, 3], params([1, 1], [1, 1], 1, 1), true),
        case(
            "3x3, groups 2",
            4,
            6,
            [3, 3],
            params([1, 1], [1, 1], 1, 2),
            true,
        ),
        case(
            "3x3, groups = Cin, 2 outputs each",
            3,
            6,
            [3, 3],
            params([1, 1], [1, 1], 1, 3),
            false,
        ),
        case(
            "3x3, stride 2, dilation 2",
            3,
            4,
            [3, 3],
            params([2, 2], [2, 2], 2, 1),
            false,
        ),
        case("1x1", 5, 4, [1, 1], params([1, 1], [0, 0], 1, 1), true),
        case(
            "1x1, groups 2",
            4,
            6,
            [1, 1],
            params([1, 1], [0, 0], 1, 2),
            false,
        ),
        case(
            "1x1, stride 2",
            4,
            3,
            [1, 1],
            params([2, 2], [0, 0], 1, 1),
            false,
        ),
        case(
            "1x7, stride (1, 2), padding (0, 3)",
            3,
            4,
            [1, 7],
            params([1, 2], [0, 3], 1, 1),
            false,
        ),
        case(
            "7x1, stride (2, 1), padding (3, 0)",
            4,
            3,
            [7, 1],
            params([2, 1], [3, 0], 1, 1),
            true,
        ),
    ]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The contents of a buffer an op returned.
fn host(e: &dyn Executor, result: Result<DeviceBuffer<f32>, GpuError>) -> Vec<f32> {
    e.to_host(&result.unwrap()).unwrap()
}

/// With TF32 GEMMs (on data TF32 represents exactly): tensor cores add with truncation, a few
/// units in the last place per 8-deep step of sums up to ~50.
const TF32_SUMS: Tolerance = Tolerance {
    atol: 5e-4,
    eps: 1e-4,
};

/// Compares `got` with `expected` within [`SUMS`] ([`TF32_SUMS`] when the executor's GEMMs run
/// on TF32), naming the first mismatches.
#[track_caller]
fn check(exec: &dyn Executor, what: &str, got: &[f32], expected: &[f32]) {
    let tolerance = match exec.gemm_precision() {
        GemmPrecision::F32 => SUMS,
        GemmPrecision::Tf32 => TF32_SUMS,
    };
    compare(exec, what, got, expected, tolerance);
}

/// The inputs of one case: x, the weight, the bias and an output gradient.
struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

impl Data {
    /// Random data for `g`, made of values `precision` represents exactly.
    fn new(g: &ConvGeometry, seed: u64, precision: GemmPrecision) -> Data {
        let x_len = g.batch * g.c_in * g.input[0] * g.input[1];
        let w_len = g.c_out * g.c_in / g.groups * g.kernel[0] * g.kernel[1];
        let y_len = g.batch * g.c_out * g.output[0] * g.output[1];
        let values = |len, seed| {
            let x = random(len, seed);
            match precision {
                GemmPrecision::F32 => x,
                GemmPrecision::Tf32 => x.into_iter().map(round_to_tf32).collect(),
            }
        };
        Data {
            x: values(x_len, seed),
            w: values(w_len, seed + 1),
            b: values(g.c_out, seed + 2),
            dy: values(y_len, seed + 3),
        }
    }
}

/// Forward and every gradient of one case with `plan` against the CPU; the weight and bias
/// gradients twice, which must give the same bits.
fn check_case(e: &dyn Executor, case: &Case, plan: &ConvPlan, data: &Data) {
    let g = plan.geometry();
    let name = format!("{} ({} images a chunk)", case.name, plan.images_per_chunk());
    let (x, w) = (e.to_device(&data.x).unwrap(), e.to_device(&data.w).unwrap());
    let (b, dy) = (
        e.to_device(&data.b).unwrap(),
        e.to_device(&data.dy).unwrap(),
    );

    let bias = case.bias.then_some(&b);
    let want = reference::forward(g, &data.x, &data.w, case.bias.then_some(&data.b[..]));
    let got = host(e, plan.forward(e, &x, &w, bias));
    check(e, &format!("{name}: forward"), &got, &want);

    // Each gradient alone and both at once (one launch on the depthwise path): the same values.
    let want_dx = reference::backward_input(g, &data.w, &data.dy);
    let want_dw = reference::backward_weight(g, &data.x, &data.dy);
    let mut dw_bits = Vec::new();
    for needs in [[true, false], [false, true], [true, true]] {
        let what = |grad: &str| format!("{name}: backward {grad} of {needs:?}");
        let [dx, dw] = plan.backward(e, &x, &w, &dy, needs).unwrap();
        assert_eq!(
            [dx.is_some(), dw.is_some()],
            needs,
            "{}",
            what("the gradients")
        );
        if let Some(dx) = dx {
            check(e, &what("dx"), &host(e, Ok(dx)), &want_dx);
        }
        if let Some(dw) = dw {
            let got = host(e, Ok(dw));
            check(e, &what("dw"), &got, &want_dw);
            dw_bits.push(bits(&got));
        }
    }
    assert_eq!(dw_bits[0], dw_bits[1], "{name}: backward_weight rerun");
    let [dx, dw] = plan.backward(e, &x, &w, &dy, [false, false]).unwrap();
    assert!(
        dx.is_none() && dw.is_none(),
        "{name}: no gradient asked for"
    );

    let want = reference::backward_bias(g, &data.dy);
    let got = host(e, plan.backward_bias(e, &dy));
    check(e, &format!("{name}: backward_bias"), &got, &want);
    let again = host(e, plan.backward_bias(e, &dy));
    assert_eq!(bits(&got), bits(&again), "{name}: backward_bias rerun");
}

/// Every case against the CPU, with the whole batch in one workspace chunk and (on the GEMM paths)
/// one image a chunk, and groups of convolutions of one shape.
fn check_against_cpu(e: &dyn Executor) {
    check_every_case(e, GemmPrecision::F32);
    check_groups(e);
}

/// One group of convolutions of one shape (`device::gpu::conv::forward_group`) against the CPU
/// reference of each convolution, and against each one's own plan bit for bit. Slots 0..4 read
/// one input, the others a second one; the gradients wanted differ from slot to slot.
fn check_group(e: &dyn Executor, name: &str, plans: &[ConvPlan]) {
    let name = |s: usize| format!("{name}, slot {s}");
    let geometries: Vec<&ConvGeometry> = plans.iter().map(ConvPlan::geometry).collect();
    let plan_refs: Vec<&ConvPlan> = plans.iter().collect();
    let data: Vec<Data> = (geometries.iter().enumerate())
        .map(|(s, g)| Data::new(g, 100 + 10 * s as u64, GemmPrecision::F32))
        .collect();
    let x_of = |s: usize| &data[s / 4 * 4].x;
    let xs: Vec<DeviceBuffer<f32>> = (0..plans.len().div_ceil(4))
        .map(|i| e.to_device(x_of(4 * i)).unwrap())
        .collect();
    let x_buf = |s: usize| &xs[s / 4];
    let ws: Vec<DeviceBuffer<f32>> = data.iter().map(|d| e.to_device(&d.w).unwrap()).collect();
    let dys: Vec<DeviceBuffer<f32>> = (data.iter()).map(|d| e.to_device(&d.dy).unwrap()).collect();

    let x_refs: Vec<&DeviceBuffer<f32>> = (0..plans.len()).map(x_buf).collect();
    let w_refs: Vec<&DeviceBuffer<f32>> = ws.iter().collect();
    let ys = conv::forward_group(e, &plan_refs, &x_refs, &w_refs).unwrap();
    for (s, y) in ys.into_iter().enumerate() {
        let got = host(e, Ok(y));
        let want = reference::forward(geometries[s], x_of(s), &data[s].w, None);
        check(e, &format!("{}: forward", name(s)), &got, &want);
        let alone = host(e, plans[s].forward(e, x_buf(s), &ws[s], None));
        assert_eq!(bits(&got), bits(&alone), "{}: forward alone", name(s));
    }

    let patterns = [[true, true], [false, true], [true, false], [false, false]];
    let needs: Vec<[bool; 2]> = (0..plans.len()).map(|s| patterns[s % 4]).collect();
    let inputs: Vec<BackwardInputs> = (0..plans.len())
        .map(|s| BackwardInputs {
            x: x_buf(s),
            w: &ws[s],
            dy: &dys[s],
        })
        .collect();
    let grads = conv::backward_group(e, &plan_refs, &inputs, &needs).unwrap();
    for (s, [dx, dw]) in grads.into_iter().enumerate() {
        let g = geometries[s];
        let what = |grad: &str| format!("{}: backward {grad} of {:?}", name(s), needs[s]);
        assert_eq!(
            [dx.is_some(), dw.is_some()],
            needs[s],
            "{}",
            what("the gradients")
        );
        let [alone_dx, alone_dw] =
            (plans[s].backward(e, x_buf(s), &ws[s], &dys[s], needs[s])).unwrap();
        if let (Some(dx), Some(alone)) = (dx, alone_dx) {
            let got = host(e, Ok(dx));
            let want = reference::backward_input(g, &data[s].w, &data[s].dy);
            check(e, &what("dx"), &got, &want);
            assert_eq!(
                bits(&got),
                bits(&host(e, Ok(alone))),
                "{}",
                what("dx alone")
            );
        }
        if let (Some(dw), Some(alone)) = (dw, alone_dw) {
            let got = host(e, Ok(dw));
            let want = reference::backward_weight(g, x_of(s), &data[s].dy);
            check(e, &what("dw"), &got, &want);
            assert_eq!(
                bits(&got),
                bits(&host(e, Ok(alone))),
                "{}",
                what("dw alone")
            );
        }
    }
}

/// Groups of five convolutions (two launches per kernel): a DARTS edge's four first-stage
/// depthwise windows plus a fifth, on 33×31 images (256-thread depthwise backward blocks) and on
/// 7×9 with stride 2 (one warp); five 1×1 convolutions, their weight gradients summed over one
/// chunk of images and over one image a chunk; five dense 3×3 convolutions (im2col).
fn check_groups(e: &dyn Executor) {
    for (input, stride, c) in [([33, 31], 1, 3), ([7, 9], 2, 5)] {
        let windows = [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 4, 2), (3, 1, 1)];
        let plans: Vec<ConvPlan> = (windows.iter())
            .map(|&(k, pad, dil)| {
                let p = params([stride; 2], [pad; 2], dil, c);
                let g = ConvGeometry {
                    batch: 2,
                    c_in: c,
                    c_out: c,
                    input,
                    kernel: [k, k],
                    output: p.output_size(input, [k, k]).unwrap(),
                    stride: p.stride,
                    padding: p.padding,
                    dilation: p.dilation,
                    groups: c,
                };
                ConvPlan::new(&g).unwrap()
            })
            .collect();
        let name = format!("depthwise group on {input:?}, stride {stride}");
        check_group(e, &name, &plans);
    }
    let all = cases();
    let find = |name: &str| all.iter().find(|c| c.name == name).unwrap().geometry();
    let pointwise = ConvGeometry {
        c_in: 5,
        c_out: 5,
        groups: 1,
        ..find("1x1, groups 2")
    };
    let plan = ConvPlan::new(&pointwise).unwrap();
    check_group(e, "1x1 group", &[plan; 5]);
    check_group(
        e,
        "1x1 group, one image a chunk",
        &[plan.with_images_per_chunk(1); 5],
    );
    let stem = ConvPlan::new(&find("3x3 stem")).unwrap();
    check_group(e, "3x3 group", &[stem; 5]);
}

/// [`check_against_cpu`] with the executor's GEMMs set to `precision` (and left so).
fn check_every_case(e: &dyn Executor, precision: GemmPrecision) {
    e.set_gemm_precision(precision).unwrap();
    for (i, case) in cases().iter().enumerate() {
        let g = case.geometry();
        let data = Data::new(&g, 10 * i as u64, precision);
        let plan = ConvPlan::new(&g).unwrap();
        assert_eq!(plan.images_per_chunk(), g.batch);
        check_case(e, case, &plan, &data);
        if g.groups != g.c_in || g.groups != g.c_out {
            check_case(e, case, &plan.with_images_per_chunk(1), &data);
        }
    }
}

cpu_reference_tests!(check_against_cpu, COVERED, KernelId::MatmulGemmFwdF32);

/// The convolutions with TF32 GEMMs: every batched layout they use, through the tensor-core kernel.
mod tf32 {
    use super::*;

    fn check_against_cpu_tf32(e: &dyn Executor) {
        check_every_case(e, GemmPrecision::Tf32);
    }

    cpu_reference_tests!(
        check_against_cpu_tf32,
        COVERED,
        KernelId::MatmulGemmTf32FwdF32
    );
}

/// The kernels each path launches: depthwise convs never reach the GEMM, 1×1 stride-1 convs
/// never unfold their input, everything else goes through im2col and col2im.
#[test]
fn each_path_launches_its_kernels() {
    let expect = |case: &Case, launches: &[KernelId]| {
        let exec = TestExecutor::new(Box::new(EmuExecutor::new()));
        let e: &dyn Executor = &exec;
        let g = case.geometry();
        let data = Data::new(&g, 7, GemmPrecision::F32);
        let plan = ConvPlan::new(&g).unwrap();
        let (x, w) = (e.to_device(&data.x).unwrap(), e.to_device(&data.w).unwrap());
        let dy = e.to_device(&data.dy).unwrap();
        plan.forward(e, &x, &w, None).unwrap();
        plan.backward(e, &x, &w, &dy, [true, true]).unwrap();
        let mut launches = launches.to_vec();
        launches.sort();
        assert_eq!(exec.launched(), launches, "{}", case.name);
    };
    let all = cases();
    let find = |name: &str| all.iter().find(|c| c.name == name).unwrap();
    expect(
        find("sep_conv 3x3 (depthwise)"),
        &[KernelId::ConvDepthwiseFwdF32, KernelId::ConvDepthwiseBwdF32],
    );
    expect(
        find("1x1, groups 2"),
        &[KernelId::MatmulGemmFwdF32, KernelId::ConvWeightSumBwdF32],
    );
    expect(
        find("1x1, stride 2"),
        &[
            KernelId::MatmulGemmFwdF32,
            KernelId::ConvIm2colFwdF32,
            KernelId::ConvCol2imBwdF32,
            KernelId::ConvWeightSumBwdF32,
        ],
    );
}

/// The depthwise kernels on one-block grids (the forward's block, and the backward's block for
/// each gradient, walk everything by their grid-stride loops) give the same bits as on the grids
/// the plan picks. The backward keeps the plan's block size, on which its block trees depend.
#[test]
fn depthwise_kernels_are_the_same_on_any_grid() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let all = cases();
    // The 33×31 case has 256-thread backward blocks, the other a single warp.
    for case in [&all[0], &all[3]] {
        let g = case.geometry();
        let data = Data::new(&g, 3, GemmPrecision::F32);
        let plan = ConvPlan::new(&g).unwrap();
        let (x, w) = (e.to_device(&data.x).unwrap(), e.to_device(&data.w).unwrap());
        let dy = e.to_device(&data.dy).unwrap();
        let forward = host(e, plan.forward(e, &x, &w, None));
        let [input, weight] = plan.backward(e, &x, &w, &dy, [true, true]).unwrap();
        let input = e.to_host(&input.unwrap()).unwrap();
        let weight = e.to_host(&weight.unwrap()).unwrap();

        let (n, c) = (g.batch as i32, g.c_in as i32);
        let window = ConvWindow::new(&g).unwrap();
        let mut y = e.alloc::<f32>(data.dy.len()).unwrap();
        let mut dweight = e.alloc::<f32>(data.w.len()).unwrap();
        let mut dx = e.alloc::<f32>(data.x.len()).unwrap();
        // SAFETY: x, w, y and dy hold N·C·H·W, C·kh·kw, N·C·Ho·Wo and N·C·Ho·Wo elements of this
        // (consistent, depthwise) geometry, dweight C·kh·kw and dx N·C·H·W; the grids have one
        // row, so only slot 0 is used; block 0 of the backward computes dweight, block 1 dx.
        unsafe {
            kernels::conv_depthwise_fwd_f32(
                e,
                LaunchConfig::linear(1, 32),
                &x,
                &x,
                &x,
                &x,
                &w,
                &w,
                &w,
                &w,
                Some(&mut y),
                None,
                None,
                None,
                n,
                c,
                window,
                window,
                window,
                window,
            )
            .unwrap();
            kernels::conv_depthwise_bwd_f32(
                e,
                LaunchConfig::linear(2, plan.depthwise_backward_threads()),
                &x,
                &x,
                &x,
                &x,
                &dy,
                &dy,
                &dy,
                &dy,
                &w,
                &w,
                &w,
                &w,
                Some(&mut dx),
                None,
                None,
                None,
                Some(&mut dweight),
                None,
                None,
                None,
                n,
                c,
                window,
                window,
                window,
                window,
                1,
            )
            .unwrap();
        }
        assert_eq!(
            bits(&e.to_host(&y).unwrap()),
            bits(&forward),
            "{}",
            case.name
        );
        assert_eq!(
            bits(&e.to_host(&dweight).unwrap()),
            bits(&weight),
            "{}",
            case.name
        );
        assert_eq!(
            bits(&e.to_host(&dx).unwrap()),
            bits(&input),
            "{}",
            case.name
        );
    }
}

#[test]
fn wrong_sizes_are_errors() {
    let exec = EmuExecutor::new();
    let e: &dyn Executor = &exec;
    let g = cases()[5].geometry();
    let argument = |r: Result<ConvPlan, GpuError>| matches!(r, Err(GpuError::Argument { .. }));
    assert!(argument(ConvPlan::new(&ConvGeometry { groups: 2, ..g })));
    assert!(argument(ConvPlan::new(&ConvGeometry { groups: 0, ..g })));
    assert!(argument(ConvPlan::new(&ConvGeometry {
        stride: [0, 1],
        ..g
    })));
    assert!(argument(ConvPlan::new(&ConvGeometry {
        output: [7, 8],
        ..g
    })));
    assert!(argument(ConvPlan::new(&ConvGeometry {
        kernel: [9, 3],
        ..g
    })));
    let plan = ConvPlan::new(&g).unwrap();
    let data = Data::new(&g, 1, GemmPrecision::F32);
    let (x, w) = (e.to_device(&data.x).unwrap(), e.to_device(&data.w).unwrap());
    let dy = e.to_device(&data.dy).unwrap();
    let short = e.to_device(&data.x[1..]).unwrap();
    assert!(plan.forward(e, &short, &w, None).is_err());
    assert!(plan.forward(e, &x, &x, None).is_err());
    assert!(plan.forward(e, &x, &w, Some(&w)).is_err());
    for needs in [[true, false], [false, true]] {
        assert!(plan.backward(e, &x, &w, &x, needs).is_err());
        assert!(plan.backward(e, &dy, &w, &dy, needs).is_err());
        assert!(plan.backward(e, &x, &x, &dy, needs).is_err());
    }
    assert!(plan.backward_bias(e, &x).is_err());
    assert!(plan.forward(e, &x, &w, None).is_ok());

    // Groups of depthwise convolutions: one shape, depthwise plans, a buffer of each kind per plan.
    let (sep, dil) = (cases()[1].geometry(), cases()[4].geometry());
    let dense = ConvPlan::new(&g).unwrap();
    let other_dense = ConvPlan::new(&cases()[6].geometry()).unwrap();
    let sep_plan = ConvPlan::new(&sep).unwrap();
    let other_size = ConvPlan::new(&cases()[2].geometry()).unwrap();
    let d = Data::new(&sep, 2, GemmPrecision::F32);
    let (x, w, dy) = (
        e.to_device(&d.x).unwrap(),
        e.to_device(&d.w).unwrap(),
        e.to_device(&d.dy).unwrap(),
    );
    assert_ne!(sep.c_in, dil.c_in);
    let group_error =
        |plans: &[&ConvPlan], xs: &[&DeviceBuffer<f32>], ws: &[&DeviceBuffer<f32>]| {
            matches!(
                conv::forward_group(e, plans, xs, ws),
                Err(GpuError::Argument { .. })
            )
        };
    assert!(conv::forward_group(e, &[&sep_plan, &sep_plan], &[&x, &x], &[&w, &w]).is_ok());
    assert!(group_error(&[], &[], &[]), "no convolution");
    assert!(
        group_error(&[&sep_plan, &dense], &[&x, &x], &[&w, &w]),
        "a dense convolution"
    );
    assert!(
        group_error(&[&dense, &sep_plan], &[&x, &x], &[&w, &w]),
        "a depthwise one"
    );
    assert!(
        group_error(&[&sep_plan, &other_size], &[&x, &x], &[&w, &w]),
        "two shapes"
    );
    assert!(
        group_error(&[&sep_plan, &sep_plan], &[&x], &[&w, &w]),
        "one input short"
    );
    assert!(group_error(&[&sep_plan], &[&w], &[&w]), "a short input");
    let inputs = BackwardInputs {
        x: &x,
        w: &w,
        dy: &dy,
    };
    let wrong_dy = BackwardInputs { dy: &w, ..inputs };
    let needs = [[true, true]];
    assert!(conv::backward_group(e, &[&sep_plan], &[inputs], &needs).is_ok());
    assert!(conv::backward_group(e, &[&sep_plan], &[wrong_dy], &needs).is_err());
    assert!(conv::backward_group(e, &[&sep_plan], &[inputs], &[[true, true]; 2]).is_err());
    let two_geometries =
        conv::backward_group(e, &[&dense, &other_dense], &[inputs; 2], &[needs[0]; 2]);
    assert!(matches!(two_geometries, Err(GpuError::Argument { .. })));
}
