//! Gradient accumulation on the tape: a variable read by many ops gets the sum of their
//! gradients, added in the order they arrive, up to `SUM_TERMS` at a time (`Tensor::sum_of`), with
//! the bits of adding them one by one, on the CPU and on the emulator; on a GPU executor that costs
//! one launch per `SUM_TERMS − 1` contributions instead of one each. In its own test binary
//! because the emulator's launch counters are process-wide.

mod common;

use common::{bits, launches, randn};
use darts::autograd::SUM_TERMS;
use darts::device::cpu::CHUNK;
use darts::device::gpu::KernelId;
use darts::ops::elementwise::scale;
use darts::ops::shape::concat;
use darts::{Device, Error, Result, Tape, Tensor};

#[test]
fn sum_of_has_the_bits_of_adding_two_at_a_time() {
    // Several of the CPU's parallel chunks; terms of mixed magnitudes, so the order matters.
    let n = 2 * CHUNK + 7;
    for device in [Device::Cpu, Device::Emu] {
        let terms: Vec<Tensor> = (0..20)
            .map(|i| {
                let t = randn(&[n], i).scaled(1.0 + 100.0 * (i % 3) as f32).unwrap();
                t.to_device(device).unwrap()
            })
            .collect();
        for count in [1, 2, 7, SUM_TERMS, SUM_TERMS + 1, 15, 20] {
            let got = Tensor::sum_of(&terms[..count]).unwrap();
            let want = terms[1..count]
                .iter()
                .try_fold(terms[0].clone(), |acc, t| acc.add(t))
                .unwrap();
            assert_eq!(got.device(), device);
            assert_eq!(bits(&got), bits(&want), "{count} terms on {device}");
        }
    }
}

#[test]
fn sum_of_refuses_no_terms_and_terms_that_do_not_match() {
    let a = randn(&[4], 1);
    let invalid = |r: Result<Tensor>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(invalid(Tensor::sum_of(&[])));
    assert!(Tensor::sum_of(&[a.clone(), randn(&[5], 2)]).is_err());
    let on_emu = a.to_device(Device::Emu).unwrap();
    assert!(invalid(Tensor::sum_of(&[a.clone(), on_emu])));
    assert_eq!(
        bits(&Tensor::sum_of(std::slice::from_ref(&a)).unwrap()),
        bits(&a)
    );
}

#[test]
fn a_variable_read_many_times_gets_the_sum_of_its_gradients() {
    const READS: usize = 20;
    let factors: Vec<f32> = (0..READS).map(|i| 0.5 + 0.37 * i as f32).collect();
    let x = randn(&[3, 33], 3);
    let seed = randn(&[3 * READS, 33], 4);
    // The contributions arrive last read first: dy_i · c_i for i = READS − 1, …, 0, each added to
    // the sum of those before it.
    let rows = 3 * 33;
    let want: Vec<u32> = (0..rows)
        .map(|j| {
            let term = |i: usize| seed.data()[i * rows + j] * factors[i];
            let sum = (0..READS - 1)
                .rev()
                .fold(term(READS - 1), |acc, i| acc + term(i));
            sum.to_bits()
        })
        .collect();
    for device in [Device::Cpu, Device::Emu] {
        let mut tape = Tape::new();
        let xv = tape.leaf(x.to_device(device).unwrap());
        let reads = factors
            .iter()
            .map(|&c| scale(&mut tape, xv, c))
            .collect::<Result<Vec<_>>>()
            .unwrap();
        let y = concat(&mut tape, &reads, 0).unwrap();
        let (sums, adds) = (KernelId::MixedSumFwdF32, KernelId::ElementwiseAddFwdF32);
        let before = (launches(device, sums), launches(device, adds));
        let seed = seed.to_device(device).unwrap();
        let grad = tape.backward_from(y, seed, &[xv]).unwrap().remove(0);
        assert_eq!(bits(&grad), want, "on {device}");
        if device != Device::Cpu {
            // SUM_TERMS at first, then SUM_TERMS − 1 more with each sum so far, and the rest.
            let expected = (READS - 1).div_ceil(SUM_TERMS - 1) as u64;
            assert_eq!(launches(device, sums) - before.0, expected);
            assert_eq!(launches(device, adds) - before.1, 0);
        }
    }
}

/// An op with several outputs (`Tape::record_many`): its backward gets the gradient of each
/// output that was used and `None` for the others, and a node none of whose outputs was used is
/// skipped.
#[test]
fn an_op_with_several_outputs_gets_the_gradient_of_each_used_output() {
    let mut tape = Tape::new();
    let x = tape.leaf(Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap());
    let outputs = |tape: &mut Tape| {
        let xv = tape.value(x).clone();
        let twice = xv.scaled(2.0).unwrap();
        let thrice = xv.scaled(3.0).unwrap();
        tape.record_many("two_scales", vec![twice, thrice], &[x], |dys, needs| {
            assert_eq!(needs, [true]);
            assert!(
                dys[0].is_some() && dys[1].is_none(),
                "only the first is used"
            );
            Ok(vec![Some(dys[0].as_ref().unwrap().scaled(2.0)?)])
        })
    };
    let used = outputs(&mut tape);
    let unused = outputs(&mut tape);
    assert_eq!((used.len(), unused.len()), (2, 2));
    assert_eq!(tape.value(used[1]).data(), [3.0, 6.0]);
    let seed = Tensor::from_vec(vec![1.0, 10.0], &[2]).unwrap();
    let grad = tape.backward_from(used[0], seed, &[x]).unwrap().remove(0);
    assert_eq!(grad.data(), [2.0, 20.0]);
}

/// The gradients an op sends to one variable it reads several times reach it last input first,
/// as they would from one op per read (the last recorded sends first): `(c + b) + a`, which here
/// differs from `(a + b) + c` in floats.
#[test]
fn the_gradients_of_a_repeated_input_arrive_last_input_first() {
    let (a, b, c) = (1e8_f32, -1e8_f32, 1.0_f32);
    assert_ne!((c + b) + a, (a + b) + c);
    let mut tape = Tape::new();
    let x = tape.leaf(Tensor::from_vec(vec![0.0], &[1]).unwrap());
    let y = tape.record(
        "three_reads",
        tape.value(x).clone(),
        &[x, x, x],
        move |_, _| {
            Ok([a, b, c]
                .iter()
                .map(|&v| Tensor::from_vec(vec![v], &[1]).ok())
                .collect())
        },
    );
    let seed = Tensor::from_vec(vec![1.0], &[1]).unwrap();
    let grad = tape.backward_from(y, seed, &[x]).unwrap().remove(0);
    assert_eq!(grad.data()[0].to_bits(), ((c + b) + a).to_bits());
}
