//! `ops::conv::conv2d_many`, several convolutions of one shape as one op (a DARTS search edge's,
//! stage by stage: depthwise ones with different windows, then 1×1 ones): each convolution gets
//! the values and gradients that `conv2d` gives it alone, bit for bit, on the CPU and on the
//! emulator (the kernels and launch code of CUDA), with four convolutions per launch there; the
//! gradients agree with finite differences; and bad groups are refused.

mod common;

use common::{bits, launches, randn};
use darts::device::gpu::KernelId;
use darts::gradcheck::{GradCheck, check_gradients};
use darts::ops::conv::{Conv2dArgs, Conv2dParams, conv2d, conv2d_many};
use darts::ops::shape::concat;
use darts::{Device, Error, Result, Tape, Tensor, Var};

/// One convolution of a group: its (square) kernel size, its parameters and which input it reads.
#[derive(Clone, Copy)]
struct Conv {
    kernel: usize,
    params: Conv2dParams,
    input: usize,
}

/// A group of depthwise convolutions on `inputs` inputs of `x_shape`.
struct Group {
    name: &'static str,
    x_shape: [usize; 4],
    inputs: usize,
    convs: Vec<Conv>,
}

/// The first depthwise convolutions of a DARTS edge's sep_conv_3x3, sep_conv_5x5, dil_conv_3x3
/// and dil_conv_5x5 on `c` channels, all reading input 0.
fn edge_first_stage(stride: usize, c: usize) -> Vec<Conv> {
    let conv = |kernel, params: Conv2dParams| Conv {
        kernel,
        params: params.groups(c),
        input: 0,
    };
    vec![
        conv(3, Conv2dParams::new(stride, 1)),
        conv(5, Conv2dParams::new(stride, 2)),
        conv(3, Conv2dParams::new(stride, 2).dilation(2)),
        conv(5, Conv2dParams::new(stride, 4).dilation(2)),
    ]
}

fn groups() -> Vec<Group> {
    let c = 3;
    let second_stage = vec![
        Conv {
            kernel: 3,
            params: Conv2dParams::new(1, 1).groups(c),
            input: 0,
        },
        Conv {
            kernel: 5,
            params: Conv2dParams::new(1, 2).groups(c),
            input: 1,
        },
    ];
    let mut six = edge_first_stage(1, c);
    six.extend(second_stage.iter().map(|&conv| Conv { input: 1, ..conv }));
    let pointwise = |input| Conv {
        kernel: 1,
        params: Conv2dParams::default(),
        input,
    };
    vec![
        Group {
            name: "an edge's first stage",
            x_shape: [2, c, 9, 7],
            inputs: 1,
            convs: edge_first_stage(1, c),
        },
        Group {
            name: "a reduction edge's first stage (odd sizes, stride 2)",
            x_shape: [2, c, 9, 7],
            inputs: 1,
            convs: edge_first_stage(2, c),
        },
        Group {
            name: "an edge's second stage",
            x_shape: [3, c, 5, 11],
            inputs: 2,
            convs: second_stage,
        },
        Group {
            name: "six convolutions (two launches)",
            x_shape: [2, c, 7, 5],
            inputs: 2,
            convs: six,
        },
        Group {
            name: "an edge's 1x1 convolutions",
            x_shape: [2, c, 9, 7],
            inputs: 4,
            convs: (0..4).map(pointwise).collect(),
        },
        Group {
            name: "five 1x1 convolutions of two inputs (two launches)",
            x_shape: [3, c, 5, 3],
            inputs: 2,
            convs: [0, 1, 0, 1, 1].map(pointwise).into(),
        },
    ]
}

/// The random inputs of a group: its inputs, then one weight per convolution.
fn group_data(group: &Group, seed: u64) -> (Vec<Tensor>, Vec<Tensor>) {
    let c = group.x_shape[1];
    let xs = (0..group.inputs)
        .map(|i| randn(&group.x_shape, seed + i as u64))
        .collect();
    let ws = (group.convs.iter().enumerate())
        .map(|(s, conv)| {
            let shape = [c, c / conv.params.groups, conv.kernel, conv.kernel];
            randn(&shape, seed + 10 + s as u64)
        })
        .collect();
    (xs, ws)
}

/// The group's outputs on `tape`, from `xs` and `ws`, as one op or one `conv2d` each.
fn outputs(tape: &mut Tape, group: &Group, xs: &[Var], ws: &[Var], as_one_op: bool) -> Vec<Var> {
    let convs: Vec<Conv2dArgs> = (group.convs.iter().zip(ws))
        .map(|(conv, &weight)| Conv2dArgs {
            x: xs[conv.input],
            weight,
            params: conv.params,
        })
        .collect();
    match as_one_op {
        true => conv2d_many(tape, &convs).unwrap(),
        false => (convs.iter())
            .map(|c| conv2d(tape, c.x, c.weight, None, c.params).unwrap())
            .collect(),
    }
}

/// The values of the outputs `used` (concatenated along channels) and the gradients of every
/// input and weight under a random seed on them, with the weight of convolution `frozen` a
/// constant.
fn run(group: &Group, device: Device, as_one_op: bool) -> (Tensor, Vec<Tensor>) {
    let (xs, ws) = group_data(group, 40);
    let frozen = 1;
    // The last output is left out of the loss: its convolution gets no output gradient.
    let used = group.convs.len() - 1;
    let mut tape = Tape::new();
    let xs: Vec<Var> = xs
        .iter()
        .map(|x| tape.leaf(x.to_device(device).unwrap()))
        .collect();
    let ws: Vec<Var> = (ws.iter().enumerate())
        .map(|(s, w)| {
            let w = w.to_device(device).unwrap();
            match s == frozen {
                true => tape.constant(w),
                false => tape.leaf(w),
            }
        })
        .collect();
    let ys = outputs(&mut tape, group, &xs, &ws, as_one_op);
    let y = concat(&mut tape, &ys[..used], 1).unwrap();
    let seed = randn(tape.shape(y), 99).to_device(device).unwrap();
    let wrt: Vec<Var> = xs.iter().chain(&ws).copied().collect();
    let grads = tape.backward_from(y, seed, &wrt).unwrap();
    (tape.value(y).clone(), grads)
}

#[test]
fn each_convolution_gets_its_own_values_and_gradients_bit_for_bit() {
    for device in [Device::Cpu, Device::Emu] {
        for group in groups() {
            let what = format!("{} on {device}", group.name);
            let kernels = match group.convs[0].kernel {
                1 => [KernelId::MatmulGemmFwdF32, KernelId::ConvWeightSumBwdF32],
                _ => [KernelId::ConvDepthwiseFwdF32, KernelId::ConvDepthwiseBwdF32],
            };
            let counts = || kernels.map(|kernel| launches(device, kernel));
            let before = counts();
            let (y, grads) = run(&group, device, true);
            let grouped = counts();
            let (want_y, want_grads) = run(&group, device, false);
            assert_eq!(bits(&y), bits(&want_y), "{what}: values");
            for (i, (got, want)) in grads.iter().zip(&want_grads).enumerate() {
                assert_eq!(bits(got), bits(want), "{what}: gradient {i}");
                assert!(
                    got.to_device(Device::Cpu)
                        .unwrap()
                        .data()
                        .iter()
                        .all(|v| v.is_finite()),
                    "{what}: gradient {i}"
                );
            }
            let frozen_or_unused = [group.inputs + 1, grads.len() - 1];
            for i in frozen_or_unused {
                let host = grads[i].to_device(Device::Cpu).unwrap();
                assert!(
                    host.data().iter().all(|&v| v == 0.0),
                    "{what}: gradient {i}"
                );
            }
            if device != Device::Cpu {
                // Four convolutions a launch; the backward skips the unused last output's. The
                // depthwise forward and backward launch once per four; a 1×1 group launches GEMMs
                // for its forward, its input gradients and its weight gradients (but the frozen
                // one's), and sums the weight gradients' per-image partials once per four.
                let k = group.convs.len() as u64;
                let launched = [grouped[0] - before[0], grouped[1] - before[1]];
                let want = match group.convs[0].kernel {
                    1 => [
                        k.div_ceil(4) + (k - 1).div_ceil(4) + (k - 2).div_ceil(4),
                        (k - 2).div_ceil(4),
                    ],
                    _ => [k.div_ceil(4), (k - 1).div_ceil(4)],
                };
                assert_eq!(launched, want, "{what}");
            }
        }
    }
}

/// Convolution is linear in each input, so the central difference is exact whatever the step;
/// a larger step than the default keeps f32 rounding out of the quotient.
#[test]
fn gradients_match_finite_differences() {
    for group in groups() {
        let (xs, ws) = group_data(&group, 7);
        let inputs: Vec<Tensor> = xs.into_iter().chain(ws).collect();
        let settings = GradCheck {
            step: 1e-2,
            ..GradCheck::default()
        };
        check_gradients(&inputs, settings, |tape, vars| {
            let (xs, ws) = vars.split_at(group.inputs);
            let ys = outputs(tape, &group, xs, ws, true);
            concat(tape, &ys, 1)
        })
        .unwrap()
        .assert_ok(group.name);
    }
}

#[test]
fn bad_groups_are_errors() {
    let run = |x_shapes: &[[usize; 4]], convs: &[(usize, usize, Conv2dParams)]| -> Result<_> {
        let mut tape = Tape::new();
        let xs: Vec<Var> = (x_shapes.iter().enumerate())
            .map(|(i, s)| tape.leaf(randn(s, i as u64)))
            .collect();
        let convs: Vec<Conv2dArgs> = (convs.iter())
            .map(|&(input, kernel, params)| Conv2dArgs {
                x: xs[input],
                weight: tape.leaf(randn(&[3, 3 / params.groups, kernel, kernel], 9)),
                params,
            })
            .collect();
        conv2d_many(&mut tape, &convs)
    };
    let invalid = |r: Result<Vec<Var>>| matches!(r, Err(Error::InvalidArgument { .. }));
    let same = Conv2dParams::new(1, 1).groups(3);
    let dense = Conv2dParams::new(1, 1);
    let x = [2, 3, 6, 5];
    assert!(
        run(
            &[x],
            &[(0, 3, same), (0, 5, Conv2dParams::new(1, 2).groups(3))]
        )
        .is_ok()
    );
    assert!(invalid(run(&[x], &[])), "no convolution");
    assert!(run(&[x, x], &[(0, 3, dense), (1, 3, dense)]).is_ok());
    assert!(
        invalid(run(&[x], &[(0, 3, same), (0, 3, dense)])),
        "a dense convolution after a depthwise one"
    );
    assert!(
        invalid(run(&[x], &[(0, 3, dense), (0, 3, same)])),
        "a depthwise convolution after a dense one"
    );
    assert!(
        invalid(run(&[x], &[(0, 3, dense), (0, 5, Conv2dParams::new(1, 2))])),
        "dense convolutions of two geometries"
    );
    assert!(
        invalid(run(&[x], &[(0, 3, same), (0, 5, same)])),
        "another output size"
    );
    assert!(
        invalid(run(&[x, [2, 3, 6, 7]], &[(0, 3, same), (1, 3, same)])),
        "another input size"
    );
    let mut tape = Tape::new();
    let on_cpu = tape.leaf(randn(&x, 1));
    let on_emu = tape.leaf(randn(&x, 2).to_device(Device::Emu).unwrap());
    let w = tape.leaf(randn(&[3, 1, 3, 3], 3));
    let conv = |x| Conv2dArgs {
        x,
        weight: w,
        params: same,
    };
    assert!(
        conv2d_many(&mut tape, &[conv(on_cpu), conv(on_emu)]).is_err(),
        "two devices"
    );
}
