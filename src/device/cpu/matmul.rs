//! Matrix products and row gathers: a strided GEMM over `matrixmultiply::sgemm` (transposes are
//! free: they only swap strides) and the embedding gather/scatter-add.

use rayon::prelude::*;

/// Rows of the output computed per rayon task when a product is big enough to split.
const ROWS_PER_TASK: usize = 32;

/// Products with fewer multiply-adds than this run as one call, on the calling thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// A read-only view of a logical `rows × cols` matrix inside a slice: element `(i, j)` sits at
/// `data[i·row_stride + j·col_stride]`. [`Mat::new`] views a row-major buffer and [`Mat::t`]
/// transposes a view without copying, so `Aᵀ·B` and `A·Bᵀ` cost the same as `A·B`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// The row-major `rows × cols` matrix held in `data`. Panics unless both sizes are positive and
    /// `data.len() == rows·cols` (the ops check shapes before calling a kernel).
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        assert!(
            rows > 0 && cols > 0 && data.len() == rows * cols,
            "Mat::new: {} elements for a {rows}×{cols} matrix",
            data.len()
        );
        Mat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of this matrix, viewing the same data.
    pub fn t(self) -> Mat<'a> {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Rows `first .. first + count` of this matrix, viewing the same data.
    fn row_block(self, first: usize, count: usize) -> Mat<'a> {
        Mat {
            data: &self.data[first * self.row_stride..],
            rows: count,
            ..self
        }
    }
}

/// `c ← a·b + beta·c` for `a: m × k` and `b: k × n`, where `c` is the row-major `m × n` result.
/// With `beta == 0` the old contents of `c` are ignored (even NaN). Big products are split over
/// fixed blocks of output rows, run in parallel; each output element is computed by the same
/// sequence of operations whatever the split, so results are bit-identical from run to run.
/// Panics when the inner dimensions or `c`'s length do not match.
pub fn gemm(a: Mat, b: Mat, beta: f32, c: &mut [f32]) {
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(c.len(), m * n, "gemm: output length");
    if m * k * n < PARALLEL_MIN_FLOPS || m <= ROWS_PER_TASK {
        sgemm_checked(a, b, beta, c);
        return;
    }
    c.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(task, c)| {
            let a = a.row_block(task * ROWS_PER_TASK, c.len() / n);
            sgemm_checked(a, b, beta, c);
        });
}

/// One `matrixmultiply::sgemm` call computing `c ← a·b + beta·c` after checking every bound it
/// relies on.
fn sgemm_checked(a: Mat, b: Mat, beta: f32, c: &mut [f32]) {
    let last = |x: &Mat| (x.rows - 1) * x.row_stride + (x.cols - 1) * x.col_stride;
    assert!(a.rows > 0 && a.cols > 0 && b.cols > 0 && a.cols == b.rows);
    assert!(last(&a) < a.data.len() && last(&b) < b.data.len());
    assert_eq!(c.len(), a.rows * b.cols);
    let stride = |s: usize| isize::try_from(s).expect("gemm: stride overflows isize");
    // SAFETY: every element sgemm reads is `x.data[i·row_stride + j·col_stride]` with `i < rows`
    // and `j < cols`, whose largest index `last(x)` was asserted to lie inside `x.data`, for both
    // `a` (m×k) and `b` (k×n); it writes (and with beta ≠ 0 reads) `c[i·n + j]` for `i < m`,
    // `j < n`, inside `c` since `c.len() == m·n`. The strides are in-bounds offsets, so they fit in
    // `isize`. `c` is a unique borrow, so it aliases neither input, and no element of `c` is
    // reachable by two index pairs (row stride n ≥ 1, column stride 1).
    unsafe {
        matrixmultiply::sgemm(
            a.rows,
            a.cols,
            b.cols,
            1.0,
            a.data.as_ptr(),
            stride(a.row_stride),
            stride(a.col_stride),
            b.data.as_ptr(),
            stride(b.row_stride),
            stride(b.col_stride),
            beta,
            c.as_mut_ptr(),
            stride(b.cols),
            1,
        );
    }
}

/// Rows `ids[r]` of the row-major `[vocab, dim]` table `weight`, stacked into `[ids.len(), dim]`.
/// Every id must be below `vocab` (checked by the op).
pub fn gather_rows(weight: &[f32], dim: usize, ids: &[usize]) -> Vec<f32> {
    let mut out = vec![0.0; ids.len() * dim];
    out.par_chunks_mut(dim)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| row.copy_from_slice(&weight[id * dim..(id + 1) * dim]));
    out
}

/// The gradient of [`gather_rows`]: a zero `[vocab, dim]` table with row `r` of `dy` added into
/// row `ids[r]`, in `r` order (so repeated ids accumulate deterministically).
pub fn scatter_add_rows(dy: &[f32], dim: usize, ids: &[usize], vocab: usize) -> Vec<f32> {
    let mut out = vec![0.0; vocab * dim];
    for (row, &id) in dy.chunks_exact(dim).zip(ids) {
        out[id * dim..(id + 1) * dim]
            .iter_mut()
            .zip(row)
            .for_each(|(o, &g)| *o += g);
    }
    out
}
