//! The CPU reference backend: one module per op family, plain Rust on slices, parallel over batch
//! and channels with rayon. Every reduction runs in a fixed order, so results are bit-identical
//! from run to run whatever the thread count.

pub mod batchnorm;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod matmul;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod rnn;
pub mod shape;
pub mod softmax;

use rayon::prelude::*;

/// Elements per rayon task in elementwise loops: big enough to amortise scheduling.
pub const CHUNK: usize = 1 << 14;

/// `out[i] = f(x[i])`, in parallel chunks.
pub fn map_into(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)));
}

/// `out[i] = f(a[i], b[i])`, in parallel chunks.
pub fn zip_into(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            o.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(o, (&a, &b))| *o = f(a, b))
        });
}

/// `f(x[i])` into a new vector.
pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    map_into(x, &mut out, f);
    out
}

/// `f(a[i], b[i])` into a new vector.
pub fn zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0; a.len()];
    zip_into(a, b, &mut out, f);
    out
}

/// Sum in f64, in a fixed order (fixed-size chunks summed in parallel, then the partial sums in
/// index order), so the result does not depend on scheduling.
pub fn sum_f64(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| v as f64).sum::<f64>())
        .collect();
    partials.iter().sum()
}

/// Dot product in f64, in the same fixed order as [`sum_f64`].
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let partials: Vec<f64> = a
        .par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum::<f64>()
        })
        .collect();
    partials.iter().sum()
}
