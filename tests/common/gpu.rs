//! The harness of the `tests/kernels_<family>.rs` files: how a result must agree with the CPU
//! reference (a [`Tolerance`], or the same [`Bits`]), the comparison of a device buffer with the
//! reference (naming the first mismatches), random data, and the pair of tests that runs a file's
//! comparisons on the emulator and on CUDA, each under a [`TestExecutor`] (so every device
//! allocation starts as NaN and the kernels launched are recorded), and then checks the kernels
//! launched against the file's `COVERED` list.

use darts::Rng;
use darts::device::gpu::{
    CudaExecutor, DeviceBuffer, EmuExecutor, Executor, KernelId, TestExecutor,
};

/// Allowed difference `atol + |expected| · eps`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// The absolute part.
    pub atol: f32,
    /// The part relative to the expected value.
    pub eps: f32,
}

/// How a result element must agree with the CPU reference's element to pass.
pub trait Criterion: Copy {
    /// Whether `got` passes against `expected`.
    fn accepts(self, got: f32, expected: f32) -> bool;
}

impl Criterion for Tolerance {
    /// Within the tolerance; a NaN difference never is, and an infinite reference takes exactly
    /// that infinity (its allowance would otherwise be infinite too).
    fn accepts(self, got: f32, expected: f32) -> bool {
        if expected.is_infinite() {
            return got == expected;
        }
        let difference = (got - expected).abs();
        !(difference.is_nan() || difference > self.atol + expected.abs() * self.eps)
    }
}

/// For kernels that only move or generate values: the bits must agree (so −0 is not +0, and NaN
/// matches a NaN of the same bits).
#[derive(Clone, Copy, Debug)]
pub struct Bits;

impl Criterion for Bits {
    fn accepts(self, got: f32, expected: f32) -> bool {
        got.to_bits() == expected.to_bits()
    }
}

/// For kernels that do the CPU's float operations in the CPU's order (no fma contraction where
/// it would round differently): the values must agree.
pub const EXACT: Tolerance = Tolerance {
    atol: 0.0,
    eps: 0.0,
};

/// Compares `got` with `expected` element by element with `criterion`, naming the first five
/// mismatches, `what` and the executor; a failure points at the caller.
#[track_caller]
pub fn compare(
    exec: &dyn Executor,
    what: &str,
    got: &[f32],
    expected: &[f32],
    criterion: impl Criterion,
) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths differ");
    let bad: Vec<String> = got
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (g, e))| !criterion.accepts(**g, **e))
        .take(5)
        .map(|(i, (g, e))| format!("[{i}] got {g:e}, expected {e:e}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what} on {} (n = {}): first mismatches: {}",
        exec.describe(),
        expected.len(),
        bad.join("; ")
    );
}

/// Copies `got` back and compares it with `expected` by `criterion`, naming the first mismatches.
#[track_caller]
pub fn check(
    exec: &dyn Executor,
    what: &str,
    got: &DeviceBuffer<f32>,
    expected: &[f32],
    criterion: impl Criterion,
) {
    let got = exec.to_host(got).unwrap();
    compare(exec, what, &got, expected, criterion);
}

/// `n` normal values of mean 0 and standard deviation `scale`, from `seed`.
pub fn normal(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| scale * rng.normal()).collect()
}

/// `n` standard normal values from `seed`.
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    normal(n, 1.0, seed)
}

/// `x` rounded to TF32 (10 mantissa bits) to nearest, ties away from zero: the CPU's twin of the
/// `cvt.rna.tf32.f32` that the TF32 GEMM applies to its inputs. Infinity and NaN pass unchanged.
pub fn round_to_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    f32::from_bits((x.to_bits() + 0x1000) & 0xffff_e000)
}

/// `x` with `big` at `x[n / 2]` and `-big` at `x[n / 3]` when it is longer than 2: values whose
/// exponential overflows, where a careless sigmoid or softmax gives NaN.
pub fn plant_extremes(mut x: Vec<f32>, big: f32) -> Vec<f32> {
    let n = x.len();
    if n > 2 {
        x[n / 2] = big;
        x[n / 3] = -big;
    }
    x
}

/// Runs `check_against_cpu` on `backend` under a [`TestExecutor`], then asserts that it launched
/// exactly the kernels of `covered` (a file's `COVERED` list) and `shared` (kernels of other
/// families its ops launch too).
pub fn check_backend(
    backend: Box<dyn Executor>,
    check_against_cpu: fn(&dyn Executor),
    covered: &[KernelId],
    shared: &[KernelId],
) {
    let exec = TestExecutor::new(backend);
    check_against_cpu(&exec);
    let mut expected = [covered, shared].concat();
    expected.sort();
    assert_eq!(
        exec.launched(),
        expected,
        "kernels launched on {}",
        exec.describe()
    );
}

/// [`check_backend`] on the bounds-checked emulator, so that a kernel that writes outside its
/// buffers fails, and one that reads outside them reads NaN or faults.
pub fn check_emulator(
    check_against_cpu: fn(&dyn Executor),
    covered: &[KernelId],
    shared: &[KernelId],
) {
    check_backend(
        Box::new(EmuExecutor::bounds_checked()),
        check_against_cpu,
        covered,
        shared,
    );
}

/// [`check_backend`] on CUDA device 0, or a printed "skipped" line where this machine has no
/// driver or the build has no PTX.
pub fn check_cuda(check_against_cpu: fn(&dyn Executor), covered: &[KernelId], shared: &[KernelId]) {
    match CudaExecutor::new(0) {
        Ok(cuda) => check_backend(Box::new(cuda), check_against_cpu, covered, shared),
        Err(e) => println!("skipped cuda_matches_the_cpu_reference: {e}"),
    }
}

/// Defines a kernel family's two tests, `emulator_matches_the_cpu_reference` and
/// `cuda_matches_the_cpu_reference`: [`check_emulator`] and [`check_cuda`] of the file's
/// `check_against_cpu: fn(&dyn Executor)` and `COVERED` list, and optionally of the kernels of
/// other families that its ops launch too. (Only the kernel test binaries use it, hence the
/// `allow`s, as for the rest of `common`.)
#[allow(unused_macros)]
macro_rules! cpu_reference_tests {
    ($check_against_cpu:expr, $covered:expr $(, $shared:expr)*) => {
        #[test]
        fn emulator_matches_the_cpu_reference() {
            let shared: &[darts::device::gpu::KernelId] = &[$($shared),*];
            $crate::common::gpu::check_emulator($check_against_cpu, $covered, shared);
        }

        #[test]
        fn cuda_matches_the_cpu_reference() {
            let shared: &[darts::device::gpu::KernelId] = &[$($shared),*];
            $crate::common::gpu::check_cuda($check_against_cpu, $covered, shared);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use cpu_reference_tests;
