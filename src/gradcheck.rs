//! Finite-difference gradient checking: the test that ties every backward to its forward.
//!
//! For an op `f` with inputs `x₁…xₙ` and a fixed random tensor `r` of the output's shape, the scalar
//! `L = Σ f(x) ⊙ r` (accumulated in f64) has the analytic gradient that the tape computes with
//! `backward_from(out, r)`. Each sampled input element is nudged by ±h and the central difference
//! `(L(x + h) − L(x − h)) / 2h` must agree with the analytic value within `atol + rtol·|value|`.

use crate::Result;
use crate::autograd::{Tape, Var};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Settings of a gradient check.
#[derive(Debug, Clone, Copy)]
pub struct GradCheck {
    /// The finite-difference step.
    pub step: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (relative to the larger of the two gradients).
    pub rtol: f64,
    /// At most this many elements of each input are checked (spread evenly), to bound the cost.
    pub max_points: usize,
    /// Seed for the random output weights `r`.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            step: 1e-3,
            atol: 2e-3,
            rtol: 1e-2,
            max_points: 64,
            seed: 1234,
        }
    }
}

/// One element whose analytic and numeric gradients disagree.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// Which input.
    pub input: usize,
    /// Which element of that input (flat index).
    pub index: usize,
    /// The gradient from the tape.
    pub analytic: f64,
    /// The central finite difference.
    pub numeric: f64,
}

/// The outcome of a gradient check: how many elements were compared and which disagreed.
#[derive(Debug, Clone)]
pub struct GradReport {
    /// Elements compared, over all inputs.
    pub checked: usize,
    /// The elements outside the tolerance, in the order checked.
    pub mismatches: Vec<Mismatch>,
}

impl GradReport {
    /// Whether every compared element agreed.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.checked > 0
    }

    /// Panics with the first mismatches when the check failed (for tests).
    pub fn assert_ok(&self, what: &str) {
        assert!(self.checked > 0, "{what}: no gradient element was checked");
        assert!(
            self.mismatches.is_empty(),
            "{what}: {} of {} gradient elements disagree; first: {:?}",
            self.mismatches.len(),
            self.checked,
            &self.mismatches[..self.mismatches.len().min(5)]
        );
    }
}

/// Runs `f` on `inputs` (all treated as leaves) and compares its analytic gradients with central
/// finite differences. `f` must be deterministic (seeded dropout masks are).
pub fn check_gradients(
    inputs: &[Tensor],
    settings: GradCheck,
    f: impl Fn(&mut Tape, &[Var]) -> Result<Var>,
) -> Result<GradReport> {
    let mut tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone())).collect();
    let out = f(&mut tape, &vars)?;
    let mut rng = Rng::new(settings.seed);
    let weights = Tensor::uniform(tape.shape(out), -1.0, 1.0, &mut rng)?;
    let analytic = tape.backward_from(out, weights.clone(), &vars)?;

    let weighted_sum = |xs: &[Tensor]| -> Result<f64> {
        let mut tape = Tape::new();
        let vars: Vec<Var> = xs.iter().map(|t| tape.constant(t.clone())).collect();
        let out = f(&mut tape, &vars)?;
        Ok(tape
            .value(out)
            .data()
            .iter()
            .zip(weights.data())
            .map(|(&y, &r)| y as f64 * r as f64)
            .sum())
    };

    let mut report = GradReport {
        checked: 0,
        mismatches: Vec::new(),
    };
    for (input, tensor) in inputs.iter().enumerate() {
        let n = tensor.numel();
        let stride = n.div_ceil(settings.max_points).max(1);
        for index in (0..n).step_by(stride) {
            let nudged = |delta: f64| -> Result<f64> {
                let mut data = tensor.to_vec();
                data[index] = (data[index] as f64 + delta) as f32;
                let mut xs = inputs.to_vec();
                xs[input] = Tensor::from_vec(data, tensor.shape())?;
                weighted_sum(&xs)
            };
            // Use the step actually representable in f32 so the quotient is exact about it.
            let x = tensor.data()[index];
            let up = (x as f64 + settings.step) as f32 as f64 - x as f64;
            let down = x as f64 - (x as f64 - settings.step) as f32 as f64;
            let numeric = (nudged(settings.step)? - nudged(-settings.step)?) / (up + down);
            let value = analytic[input].data()[index] as f64;
            report.checked += 1;
            let tolerance = settings.atol + settings.rtol * value.abs().max(numeric.abs());
            let difference = (value - numeric).abs();
            if difference > tolerance || difference.is_nan() {
                report.mismatches.push(Mismatch {
                    input,
                    index,
                    analytic: value,
                    numeric,
                });
            }
        }
    }
    Ok(report)
}
