// elementwise.cu: activations, elementwise arithmetic and the DARTS mixed-op sum, forward and
// backward. The CPU reference is src/device/cpu/elementwise.rs (and the weighted-sum gradient in
// src/ops/elementwise.rs); tests/kernels_elementwise.rs compares every kernel here with it.
//
// How these kernels think
// -----------------------
// Every kernel here reads a few floats and writes one, so none of them is limited by arithmetic:
// they are limited by memory bandwidth (an H200 moves ~4.8 TB/s, i.e. ~1.2e12 floats/s, while it
// could do ~60e12 float ops/s). The whole job of an elementwise kernel is to touch each byte once,
// with loads that neighbouring threads make to neighbouring addresses ("coalesced": one 128-byte
// transaction serves a whole warp). The simplest loop does exactly that:
//
//     for (size_t i = global_thread_index(); i < n; i += global_thread_count())
//         y[i] = f(x[i]);
//
// This is a grid-stride loop: thread t of the grid handles elements t, t + T, t + 2T, ... where T
// is the number of threads in the grid. It is correct for any grid, so the Rust side (src/device/
// gpu/elementwise.rs) chooses the grid for speed alone: enough blocks to fill the GPU, not one
// block per 256 elements of a huge tensor.
//
// Matching the CPU bit for bit where we can
// -----------------------------------------
// nvcc contracts `a * b + c` into one fused multiply-add (rounded once) by default; the Rust
// reference rounds twice. Where the CPU computes such an expression (tanh backward, the weighted
// sum, the batch-norm affine map) these kernels spell the operations with __fmul_rn / __fadd_rn,
// which nvcc never contracts, so those results equal the CPU's bit for bit. Transcendentals
// (tanhf, expf) differ from the host libm by an ulp or two; the tests allow for that.
//
// The one reduction: the gradient of the mixing weights
// -----------------------------------------------------
// The DARTS mixed op is y = sum_k w_k x_k over K candidate outputs, stored as one [K, n] buffer.
// Its weight gradient dw_k = sum_i dy_i x_{k,i} is a dot product of n elements per k. A GPU sum
// usually ends in atomicAdd on one float, whose order of additions (and so whose rounding) changes
// from run to run. We want the same bits every run, so we reduce in two passes over fixed trees:
//
//   pass 1 (grid P x K): block (b, k) sums its grid-stride share of dy_i * x_{k,i} in double, then
//                        reduces over the block with warp shuffles (fixed tree), and writes the
//                        block's partial sum as two floats hi + lo (hi = float(s), lo = float(s -
//                        hi)), which keep ~48 bits of the double;
//   pass 2 (grid K):     block k adds its P partials (hi + lo, in double) with the same tree and
//                        rounds once to float.
//
// P depends only on n (the Rust side picks it), never on the GPU, so every device gives the same
// result. Summing in double costs nothing here (the loop is memory-bound even at 1/64-rate FP64)
// and matches the CPU reference, which also sums in f64.
#include "common.cuh"

// ---- Activations ------------------------------------------------------------------------------

// y = max(x, 0), NaN kept (reluf, common.cuh)
extern "C" __global__ void elementwise_relu_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = reluf(x[i]);
    }
}

// dx = dy where x > 0, else 0
extern "C" __global__ void elementwise_relu_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
    }
}

// y = tanh(x)
extern "C" __global__ void elementwise_tanh_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = tanhf(x[i]);
    }
}

// dx = dy * (1 - y^2), from the forward output y = tanh(x)
extern "C" __global__ void elementwise_tanh_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        dx[i] = dy[i] * __fsub_rn(1.0f, __fmul_rn(y[i], y[i]));
    }
}

// y = 1 / (1 + e^-x), without overflow for large |x| (see sigmoidf in common.cuh)
extern "C" __global__ void elementwise_sigmoid_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = sigmoidf(x[i]);
    }
}

// dx = dy * y * (1 - y), from the forward output y = sigmoid(x)
extern "C" __global__ void elementwise_sigmoid_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        dx[i] = dy[i] * y[i] * (1.0f - y[i]);
    }
}

// ---- Arithmetic -------------------------------------------------------------------------------
// Backward needs no kernels of its own: d(a+b) passes dy through, d(a-b) is (dy, -dy) = scale by
// -1, d(a*b) is (dy*b, dy*a) = mul, d(s*x) is s*dy = scale.

// y = a + b
extern "C" __global__ void elementwise_add_fwd_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = a[i] + b[i];
    }
}

// y = a - b
extern "C" __global__ void elementwise_sub_fwd_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = a[i] - b[i];
    }
}

// y = a * b
extern "C" __global__ void elementwise_mul_fwd_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = a[i] * b[i];
    }
}

// y = s * x
extern "C" __global__ void elementwise_scale_fwd_f32(const float* __restrict__ x, float* __restrict__ y, float s, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = x[i] * s;
    }
}

// y = a * x + b * z, each product and the sum rounded on its own (no fma), as the CPU computes it:
// the axpy-like updates of the architect's virtual step and finite differences.
extern "C" __global__ void elementwise_lincomb_fwd_f32(const float* __restrict__ x, const float* __restrict__ z, float* __restrict__ y, float a, float b, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = __fadd_rn(__fmul_rn(a, x[i]), __fmul_rn(b, z[i]));
    }
}

// ---- The DARTS mixed op -----------------------------------------------------------------------

// y = sum_k w[k] * xs[k, :], added in k order as the CPU does. Each thread loads its element of
// every candidate once; the weights (K floats) stay in cache.
extern "C" __global__ void elementwise_weighted_sum_fwd_f32(const float* __restrict__ xs, const float* __restrict__ w, float* __restrict__ y, int k, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        float acc = __fmul_rn(xs[i], w[0]);
        for (int j = 1; j < k; ++j) {
            acc = __fadd_rn(acc, __fmul_rn(w[j], xs[size_t(j) * n + i]));
        }
        y[i] = acc;
    }
}

// dxs[k, :] = w[k] * dy: every candidate gets the output gradient scaled by its weight.
extern "C" __global__ void elementwise_weighted_sum_input_bwd_f32(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dxs, int k, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        const float g = dy[i];
        for (int j = 0; j < k; ++j) {
            dxs[size_t(j) * n + i] = g * w[j];
        }
    }
}

// Pass 1 of dw[k] = sum_i dy[i] * xs[k, i]. Grid (P, K), 1-D blocks of a multiple of 32 threads.
// Block (b, k) writes partials[2 (k P + b)] = hi and partials[2 (k P + b) + 1] = lo.
extern "C" __global__ void elementwise_weighted_sum_weight_partial_bwd_f32(const float* __restrict__ dy, const float* __restrict__ xs, float* __restrict__ partials, int n) {
    __shared__ double scratch[WARP_SIZE];
    const float* x = xs + size_t(blockIdx.y) * n;
    double s = 0.0;
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        s += double(dy[i]) * double(x[i]);  // the product of two floats is exact in double
    }
    s = block_reduce_sum(s, scratch);
    if (threadIdx.x == 0) {
        const float hi = float(s);
        const size_t slot = 2 * (size_t(blockIdx.y) * gridDim.x + blockIdx.x);
        partials[slot] = hi;
        partials[slot + 1] = float(s - double(hi));
    }
}

// Pass 2: the K weights' gradients into dw[offset .. offset + K) of a gradient of `len` values
// (the weights may be a run of a larger tensor, a row of the architecture weights), zeros
// elsewhere. Block j (grid-stride over the len values) adds the P partial sums of weight
// j - offset, or writes the zero. 1-D blocks of a multiple of 32 threads.
extern "C" __global__ void elementwise_weighted_sum_weight_final_bwd_f32(const float* __restrict__ partials, float* __restrict__ dw, int p, int k, int offset, int len) {
    __shared__ double scratch[WARP_SIZE];
    for (int j = blockIdx.x; j < len; j += gridDim.x) {
        if (j < offset || j >= offset + k) {
            if (threadIdx.x == 0) dw[j] = 0.0f;
            continue;
        }
        const float* mine = partials + 2 * size_t(j - offset) * p;
        double s = 0.0;
        for (int b = threadIdx.x; b < p; b += blockDim.x) {
            s += double(mine[2 * b]) + double(mine[2 * b + 1]);
        }
        s = block_reduce_sum(s, scratch);
        if (threadIdx.x == 0) {
            dw[j] = float(s);
        }
    }
}
