// reduce.cu: the sum and mean of a whole tensor, their backward, and column sums (the bias
// gradient of a linear layer). The CPU references are sum_f64 in src/device/cpu/mod.rs (with the
// sum/mean op in src/ops/reduce.rs) and src/device/cpu/reduce.rs; tests/kernels_reduce.rs compares
// every kernel here with them.
//
// The whole-tensor sum: two passes, no atomics
// -------------------------------------------
// The textbook GPU sum has every block reduce its share and then atomicAdd its partial into one
// float. That is one launch, but the partials arrive in whatever order the blocks finish, and
// float addition is not associative: two runs give different bits. We want a loss (and every
// gradient behind it) to be reproducible bit for bit, so the sum runs in two launches:
//
//   pass 1 (P blocks): block b sums its grid-stride share of x in double, reduces over the block
//                      with warp shuffles (the fixed tree of block_reduce_sum in common.cuh) and
//                      writes its partial as two floats hi + lo (hi = float(s), lo = float(s - hi),
//                      which keep ~48 bits of the double);
//   pass 2 (1 block):  adds the P partials (hi + lo, in double) with the same tree, scales by 1 or
//                      1/n (sum or mean) and rounds once to float.
//
// P depends only on n (the Rust side picks it), never on the GPU, so the order of additions, and
// so the result, is the same everywhere. Accumulating in double makes the result agree with the
// CPU's f64 sum (another order of additions, the same double up to ~1e-16 relative) once both are
// rounded to float. The loop is bound by memory bandwidth, so double arithmetic costs nothing.
//
// Backward of sum and mean: every element gets dy * 1 or dy / n. dy is read from device memory (on
// a GPU tape the loss gradient lives there), so the fill needs no copy to the host.
//
// Column sums
// -----------
// out[j] = sum_i x[i, j] over a row-major rows x cols matrix: one thread per column walks down its
// column in row order, in double, exactly as the CPU does, so the result is bit-identical to it.
// Neighbouring threads read neighbouring columns, so every row is read coalesced. The bias
// gradient has as many columns as the layer has outputs and as many rows as the batch, so a
// thread per column is enough parallelism here; a tall, narrow matrix would want the rows split
// into chunks and a second pass, as above.
#include "common.cuh"

// Pass 1 of sum(x): block b writes partials[2b] = hi and partials[2b + 1] = lo. 1-D blocks of a
// multiple of 32 threads.
extern "C" __global__ void reduce_sum_partial_fwd_f32(const float* __restrict__ x, float* __restrict__ partials, int n) {
    __shared__ double scratch[WARP_SIZE];
    double s = 0.0;
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        s += double(x[i]);
    }
    s = block_reduce_sum(s, scratch);
    if (threadIdx.x == 0) {
        const float hi = float(s);
        partials[2 * size_t(blockIdx.x)] = hi;
        partials[2 * size_t(blockIdx.x) + 1] = float(s - double(hi));
    }
}

// Pass 2: y[0] = (sum of the p partials) * (1 / divisor); divisor is 1 for the sum, n for the mean.
// One block of a multiple of 32 threads.
extern "C" __global__ void reduce_sum_final_fwd_f32(const float* __restrict__ partials, float* __restrict__ y, int p, int divisor) {
    __shared__ double scratch[WARP_SIZE];
    double s = 0.0;
    for (int b = threadIdx.x; b < p; b += blockDim.x) {
        s += double(partials[2 * b]) + double(partials[2 * b + 1]);
    }
    s = block_reduce_sum(s, scratch);
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        y[0] = float(s * (1.0 / double(divisor)));
    }
}

// dx[i] = dy[0] * (1 / divisor) for every i: the gradient of sum (divisor 1) and mean (divisor n).
extern "C" __global__ void reduce_sum_bwd_f32(const float* __restrict__ dy, float* __restrict__ dx, int divisor, int n) {
    const float g = float(double(dy[0]) * (1.0 / double(divisor)));
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        dx[i] = g;
    }
}

// out[j] = sum_i x[i, j] for the row-major [rows, cols] matrix x, in double, i in order.
extern "C" __global__ void reduce_column_sums_fwd_f32(const float* __restrict__ x, float* __restrict__ out, int rows, int cols) {
    for (size_t j = global_thread_index(); j < size_t(cols); j += global_thread_count()) {
        double s = 0.0;
        for (int i = 0; i < rows; ++i) {
            s += double(x[size_t(i) * cols + j]);
        }
        out[j] = float(s);
    }
}
