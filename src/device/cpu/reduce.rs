//! Reductions beyond the whole-tensor sum ([`super::sum_f64`]): sums over the rows of a matrix.

use rayon::prelude::*;

/// Columns per rayon task in [`column_sums`].
const COLS_PER_TASK: usize = 256;

/// `out[j] = Σᵢ x[i, j]` for the row-major `rows × cols` matrix `x` (the bias gradient of a linear
/// layer), accumulated in f64 over `i` in order. Parallel over fixed blocks of columns, so each
/// sum's order never depends on scheduling.
pub fn column_sums(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    debug_assert_eq!(x.len(), rows * cols);
    let mut out = vec![0.0; cols];
    out.par_chunks_mut(COLS_PER_TASK)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * COLS_PER_TASK;
            let mut acc = vec![0.0f64; out.len()];
            for row in x.chunks_exact(cols) {
                acc.iter_mut()
                    .zip(&row[first..first + out.len()])
                    .for_each(|(a, &v)| *a += v as f64);
            }
            out.iter_mut().zip(&acc).for_each(|(o, &a)| *o = a as f32);
        });
    out
}
