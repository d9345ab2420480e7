// softmax.cu: softmax and log-softmax along any dimension, forward and backward, and the fused
// label-smoothed cross-entropy loss. The CPU reference is src/device/cpu/softmax.rs;
// tests/kernels_softmax.rs compares every kernel here with it.
//
// Lanes
// -----
// A softmax normalises the values along one dimension of a contiguous tensor. Seen around that
// dimension the shape is outer x size x inner: lane (o, i) holds the `size` elements
//
//     x[o * size * inner + j * inner + i],   j = 0 .. size-1,
//
// `inner` apart, and there are outer * inner independent lanes. The DARTS architecture weights
// (softmax over the 8 candidate ops of each of 14 edges) and the classifier's logits are rows:
// inner = 1, contiguous lanes. A softmax over a leading dimension has inner > 1: a lane is
// strided, but lane l and lane l + 1 sit next to each other in memory.
//
// Every lane is computed as the CPU does it, in double:
//
//     m = max_j x_j,   lse = m + log sum_j exp(x_j - m),   softmax_j = exp(x_j - lse),
//                                                          log_softmax_j = x_j - lse.
//
// Subtracting the max first keeps every exponential <= 1, so nothing overflows however large the
// logits are. Summing in double makes the order of the additions (a tree on the GPU, a loop on
// the CPU) invisible once the result is rounded to float. On an H100/H200 FP64 runs at half the
// FP32 rate, and these lanes are short, so the kernels stay bound by launches and memory traffic.
// (On a GPU with 1/64-rate FP64 the double exp() would show; a float sibling with expf() would be
// the variant to add there, tested against a looser tolerance.)
//
// Two ways to map lanes onto threads (both kept, both tested; the Rust side picks)
// -------------------------------------------------------------------------------
// v1 "block" (one block per lane): the block's threads stride over the lane, each keeps a partial
//    max / sum, and a block-wide tree combines them. Rows (inner = 1) are read coalesced: thread t
//    reads element t, its neighbour element t + 1. The block size follows the lane length (32
//    threads for the 8 candidate ops, 256 for a 1000-class row), so no block is mostly idle.
// v2 "thread" (one thread per lane): each thread walks its lane alone, in index order, exactly as
//    the CPU loop does. For inner > 1 neighbouring threads read neighbouring addresses, so this is
//    the coalesced layout there, and it needs no barriers at all. It gives too little parallelism
//    for long lanes, so the Rust side uses it only for inner > 1 and short lanes.
//
// Deterministic block reductions
// ------------------------------
// block_all_reduce below is a butterfly (xor-shuffle) tree inside each warp, then the same over the
// warps' results. Its shape depends only on blockDim.x, which the Rust side derives from the lane
// length alone, so every run (and every GPU) adds in the same order. A butterfly also leaves the
// same bits in every lane (a + b == b + a in IEEE arithmetic), so every thread gets the result
// without another trip through shared memory.
//
// Cross-entropy
// -------------
// The loss of row r with target t, K classes and label smoothing e is
//
//     loss_r = -(1-e) log p_t - (e/K) sum_k log p_k = lse - (1-e) x_t - (e/K) sum_k x_k,
//
// so it needs the row's log-sum-exp and plain sum, never the probabilities. One block per row
// writes loss_r as two floats hi + lo (hi = float(s), lo = float(s - hi), ~48 bits of the double);
// a second kernel, one block, adds the N row losses in a fixed tree and divides by N. A one-block
// second pass is enough: N is the batch size. The backward recomputes the row's lse (cheaper than
// saving it: the row is a few dozen floats) and writes
//
//     dx_rk = (p_rk - q_rk) * dloss / N,    q_rk = e/K + (1-e) [k == t_r],
//
// with dloss read from device memory (the loss gradient is a device scalar on a GPU tape, so no
// copy to the host stalls the stream). A target outside [0, K) cannot be reported from a kernel;
// its row's loss and gradient become NaN, which surfaces in the mean. The op layer validates
// targets before they reach the device.
#include "common.cuh"

// ---- Block-wide reductions whose result every thread sees -----------------------------------

struct SumOp {
    __device__ __forceinline__ double operator()(double a, double b) const { return a + b; }
};

struct MaxOp {
    __device__ __forceinline__ double operator()(double a, double b) const { return fmax(a, b); }
};

// Butterfly over the 32 lanes of a warp: after step k every lane holds the combination of its
// 2^k-lane group, and all lanes of the warp end with the same bits.
template <class Op>
__device__ __forceinline__ double warp_all_reduce(double v, Op op) {
    for (int mask = WARP_SIZE / 2; mask > 0; mask /= 2) {
        v = op(v, __shfl_xor_sync(FULL_MASK, v, mask));
    }
    return v;
}

// Combines `v` over the whole block (blockDim.x a multiple of 32, 1-D) and returns the result to
// every thread. `scratch` is __shared__ memory of at least blockDim.x / 32 doubles, free again when
// this returns. `identity` pads the second stage (0 for a sum, -inf for a max).
template <class Op>
__device__ __forceinline__ double block_all_reduce(double v, double identity, double* scratch, Op op) {
    const unsigned warp = threadIdx.x / WARP_SIZE;
    const unsigned lane = threadIdx.x % WARP_SIZE;
    const unsigned warps = blockDim.x / WARP_SIZE;
    v = warp_all_reduce(v, op);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = warp_all_reduce(lane < warps ? scratch[lane] : identity, op);
    __syncthreads();
    return v;
}

// ---- Lane addressing --------------------------------------------------------------------------

// Where lane `l` starts, for lanes of `size` elements `inner` apart (see the header).
__device__ __forceinline__ size_t lane_base(size_t l, int size, int inner) {
    const size_t o = l / size_t(inner);
    const size_t i = l % size_t(inner);
    return o * size_t(size) * size_t(inner) + i;
}

// ---- v1: one block per lane -------------------------------------------------------------------

// The log-sum-exp of the lane at `x` (elements `inner` apart), returned to every thread.
__device__ __forceinline__ double block_lane_lse(const float* x, int size, int inner, double* scratch) {
    double m = -INFINITY;
    for (int j = threadIdx.x; j < size; j += blockDim.x) {
        m = fmax(m, double(x[size_t(j) * inner]));
    }
    m = block_all_reduce(m, -INFINITY, scratch, MaxOp());
    double s = 0.0;
    for (int j = threadIdx.x; j < size; j += blockDim.x) {
        s += exp(double(x[size_t(j) * inner]) - m);
    }
    s = block_all_reduce(s, 0.0, scratch, SumOp());
    return m + log(s);
}

// y = softmax (Log = false) or log-softmax (Log = true) of every lane, block b taking lanes
// b, b + gridDim.x, ...
template <bool Log>
__device__ __forceinline__ void block_lanes_forward(const float* x, float* y, int outer, int size, int inner, double* scratch) {
    const size_t lanes = size_t(outer) * size_t(inner);
    for (size_t l = blockIdx.x; l < lanes; l += gridDim.x) {
        const size_t base = lane_base(l, size, inner);
        const double lse = block_lane_lse(x + base, size, inner, scratch);
        for (int j = threadIdx.x; j < size; j += blockDim.x) {
            const size_t at = base + size_t(j) * inner;
            const double d = double(x[at]) - lse;
            y[at] = Log ? float(d) : float(exp(d));
        }
    }
}

// Backward from the forward output y. Softmax: dx = y (dy - sum y dy). Log-softmax:
// dx = dy - exp(y) sum dy. (The product of two floats is exact in double.)
template <bool Log>
__device__ __forceinline__ void block_lanes_backward(const float* y, const float* dy, float* dx, int outer, int size, int inner, double* scratch) {
    const size_t lanes = size_t(outer) * size_t(inner);
    for (size_t l = blockIdx.x; l < lanes; l += gridDim.x) {
        const size_t base = lane_base(l, size, inner);
        double s = 0.0;
        for (int j = threadIdx.x; j < size; j += blockDim.x) {
            const size_t at = base + size_t(j) * inner;
            s += Log ? double(dy[at]) : double(y[at]) * double(dy[at]);
        }
        s = block_all_reduce(s, 0.0, scratch, SumOp());
        for (int j = threadIdx.x; j < size; j += blockDim.x) {
            const size_t at = base + size_t(j) * inner;
            const double g = double(dy[at]);
            dx[at] = Log ? float(g - __dmul_rn(exp(double(y[at])), s)) : float(double(y[at]) * (g - s));
        }
    }
}

// Softmax along the lanes, one block per lane (1-D blocks of a multiple of 32 threads).
extern "C" __global__ void softmax_softmax_block_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int outer, int size, int inner) {
    __shared__ double scratch[WARP_SIZE];
    block_lanes_forward<false>(x, y, outer, size, inner, scratch);
}

// Softmax backward from y = softmax(x), one block per lane.
extern "C" __global__ void softmax_softmax_block_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx, int outer, int size, int inner) {
    __shared__ double scratch[WARP_SIZE];
    block_lanes_backward<false>(y, dy, dx, outer, size, inner, scratch);
}

// Log-softmax along the lanes, one block per lane.
extern "C" __global__ void softmax_log_softmax_block_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int outer, int size, int inner) {
    __shared__ double scratch[WARP_SIZE];
    block_lanes_forward<true>(x, y, outer, size, inner, scratch);
}

// Log-softmax backward from y = log_softmax(x), one block per lane.
extern "C" __global__ void softmax_log_softmax_block_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx, int outer, int size, int inner) {
    __shared__ double scratch[WARP_SIZE];
    block_lanes_backward<true>(y, dy, dx, outer, size, inner, scratch);
}

// ---- v2: one thread per lane ------------------------------------------------------------------

// The same computations, each lane walked by one thread in index order (the CPU's order).
template <bool Log>
__device__ __forceinline__ void thread_lanes_forward(const float* x, float* y, int outer, int size, int inner) {
    const size_t lanes = size_t(outer) * size_t(inner);
    for (size_t l = global_thread_index(); l < lanes; l += global_thread_count()) {
        const size_t base = lane_base(l, size, inner);
        double m = -INFINITY;
        for (int j = 0; j < size; ++j) m = fmax(m, double(x[base + size_t(j) * inner]));
        double s = 0.0;
        for (int j = 0; j < size; ++j) s += exp(double(x[base + size_t(j) * inner]) - m);
        const double lse = m + log(s);
        for (int j = 0; j < size; ++j) {
            const size_t at = base + size_t(j) * inner;
            const double d = double(x[at]) - lse;
            y[at] = Log ? float(d) : float(exp(d));
        }
    }
}

template <bool Log>
__device__ __forceinline__ void thread_lanes_backward(const float* y, const float* dy, float* dx, int outer, int size, int inner) {
    const size_t lanes = size_t(outer) * size_t(inner);
    for (size_t l = global_thread_index(); l < lanes; l += global_thread_count()) {
        const size_t base = lane_base(l, size, inner);
        double s = 0.0;
        for (int j = 0; j < size; ++j) {
            const size_t at = base + size_t(j) * inner;
            s += Log ? double(dy[at]) : double(y[at]) * double(dy[at]);
        }
        for (int j = 0; j < size; ++j) {
            const size_t at = base + size_t(j) * inner;
            const double g = double(dy[at]);
            dx[at] = Log ? float(g - __dmul_rn(exp(double(y[at])), s)) : float(double(y[at]) * (g - s));
        }
    }
}

// Softmax along the lanes, one thread per lane.
extern "C" __global__ void softmax_softmax_thread_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int outer, int size, int inner) {
    thread_lanes_forward<false>(x, y, outer, size, inner);
}

// Softmax backward from y = softmax(x), one thread per lane.
extern "C" __global__ void softmax_softmax_thread_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx, int outer, int size, int inner) {
    thread_lanes_backward<false>(y, dy, dx, outer, size, inner);
}

// Log-softmax along the lanes, one thread per lane.
extern "C" __global__ void softmax_log_softmax_thread_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int outer, int size, int inner) {
    thread_lanes_forward<true>(x, y, outer, size, inner);
}

// Log-softmax backward from y = log_softmax(x), one thread per lane.
extern "C" __global__ void softmax_log_softmax_thread_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx, int outer, int size, int inner) {
    thread_lanes_backward<true>(y, dy, dx, outer, size, inner);
}

// ---- Cross-entropy ----------------------------------------------------------------------------

// Pass 1 of the loss: block b takes rows b, b + gridDim.x, ... of logits [rows, classes] and writes
// row r's loss as row_loss[2r] = hi, row_loss[2r + 1] = lo.
extern "C" __global__ void softmax_cross_entropy_rows_fwd_f32(const float* __restrict__ logits, const int* __restrict__ targets, float* __restrict__ row_loss, int rows, int classes, float smoothing) {
    __shared__ double scratch[WARP_SIZE];
    const double e = double(smoothing);
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* x = logits + size_t(r) * classes;
        const double lse = block_lane_lse(x, classes, 1, scratch);
        double total = 0.0;
        for (int k = threadIdx.x; k < classes; k += blockDim.x) total += double(x[k]);
        total = block_all_reduce(total, 0.0, scratch, SumOp());
        if (threadIdx.x == 0) {
            const int t = targets[r];
            double loss = NAN;
            if (t >= 0 && t < classes) {
                loss = __dadd_rn(lse, -__dmul_rn(1.0 - e, double(x[t])));
                loss = __dadd_rn(loss, -__dmul_rn(e / double(classes), total));
            }
            const float hi = float(loss);
            row_loss[2 * size_t(r)] = hi;
            row_loss[2 * size_t(r) + 1] = float(loss - double(hi));
        }
    }
}

// Pass 2: one block adds the `rows` row losses (hi + lo, in double) in a fixed tree and writes
// their mean to loss[0].
extern "C" __global__ void softmax_cross_entropy_mean_fwd_f32(const float* __restrict__ row_loss, float* __restrict__ loss, int rows) {
    __shared__ double scratch[WARP_SIZE];
    double s = 0.0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        s += double(row_loss[2 * r]) + double(row_loss[2 * r + 1]);
    }
    s = block_all_reduce(s, 0.0, scratch, SumOp());
    if (threadIdx.x == 0 && blockIdx.x == 0) loss[0] = float(s / double(rows));
}

// dlogits = (softmax(logits) - q) * dloss[0] / rows, one block per row (q: the smoothed target).
extern "C" __global__ void softmax_cross_entropy_bwd_f32(const float* __restrict__ logits, const int* __restrict__ targets, const float* __restrict__ dloss, float* __restrict__ dx, int rows, int classes, float smoothing) {
    __shared__ double scratch[WARP_SIZE];
    const double e = double(smoothing);
    const double scale = double(dloss[0]) / double(rows);
    const double spread = e / double(classes);
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const size_t row = size_t(r) * classes;
        const double lse = block_lane_lse(logits + row, classes, 1, scratch);
        const int t = targets[r];
        const bool valid = t >= 0 && t < classes;
        for (int k = threadIdx.x; k < classes; k += blockDim.x) {
            const double q = k == t ? spread + (1.0 - e) : spread;
            const double p = exp(double(logits[row + k]) - lse);
            dx[row + k] = valid ? float((p - q) * scale) : NAN;
        }
    }
}
