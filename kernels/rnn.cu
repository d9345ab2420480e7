// rnn.cu: the DARTS recurrent node after its matmul, forward and backward. The CPU reference is
// src/device/cpu/rnn.rs; tests/kernels_rnn.rs compares every kernel here with it.
//
// What a node computes
// --------------------
// A node of the DARTS recurrent cell multiplies its predecessor's state s_prev by a weight matrix,
// giving ch = [a | b] with two halves of `hidden` columns each, and then
//
//     c = sigmoid(a),    y = h + c * (f(b) - h)        (h = s_prev, f = tanh, relu, sigmoid or id)
//
// a highway gate between the old state and the activated candidate. Unfused, that is a split, two
// activations, a subtraction, a product and a sum: six passes over memory, each intermediate
// written, read back, and kept for backward. Fused, it is one pass that reads a, b, h and writes y.
//
// How it is parallelised
// ----------------------
// One thread per output element i = (row r, column j) in a grid-stride loop over rows * hidden.
// It reads a = ch[r, j] and b = ch[r, hidden + j]: neighbouring threads read neighbouring columns
// of the same half, so every load is coalesced although ch is twice as wide as y. The kernel is
// memory-bound (3 floats in, 1 out; backward 4 in, 3 out), so there is nothing to gain from
// shared memory or from more work per thread.
//
// The activation is a kernel argument, not a template parameter: it is the same for the whole
// launch, so every thread takes the same branch (no divergence), and one kernel serves all four.
// The codes (0 tanh, 1 relu, 2 sigmoid, 3 identity) are set in src/device/gpu/rnn.rs.
//
// Backward recomputes c and f(b) from the saved ch instead of reading them from memory: two
// transcendentals per element are cheaper than two more buffers to write and read.
//
//     dh = g * (1 - c)        da = g * (f - h) * c * (1 - c)        db = g * c * f'(b)
//
// Where a product feeds a sum (the highway, 1 - y^2 of tanh) the kernels spell the operations
// with __fmul_rn / __fadd_rn / __fsub_rn, which nvcc never contracts into one fused multiply-add,
// so they round as the CPU does. sigmoidf and tanhf still differ from the host libm by an ulp or
// two; the tests allow for that.
#include "common.cuh"

// f(x) for activation code `act`.
__device__ __forceinline__ float node_activation(float x, int act) {
    switch (act) {
        case 0: return tanhf(x);
        case 1: return reluf(x);
        case 2: return sigmoidf(x);
        default: return x;
    }
}

// f'(x) for activation code `act`, given x and y = f(x).
__device__ __forceinline__ float node_activation_derivative(float x, float y, int act) {
    switch (act) {
        case 0: return __fsub_rn(1.0f, __fmul_rn(y, y));
        case 1: return x > 0.0f ? 1.0f : 0.0f;
        case 2: return y * (1.0f - y);
        default: return 1.0f;
    }
}

// y[r, j] = h[r, j] + c * (f(b) - h[r, j]), c = sigmoid(a), where a = ch[r, j] and
// b = ch[r, hidden + j]. n = rows * hidden; ch holds 2n elements, h_prev and y hold n.
extern "C" __global__ void rnn_node_fwd_f32(const float* __restrict__ ch, const float* __restrict__ h_prev, float* __restrict__ y, int n, int hidden, int act) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        const size_t a_at = i + i / size_t(hidden) * size_t(hidden);  // r * 2 hidden + j
        const float c = sigmoidf(ch[a_at]);
        const float f = node_activation(ch[a_at + hidden], act);
        const float h = h_prev[i];
        y[i] = __fadd_rn(h, __fmul_rn(c, f - h));
    }
}

// The gradients of rnn_node_fwd_f32 for the output gradient dy: dch in ch's layout (da in the
// first half of each row, db in the second) and dh_prev in h_prev's.
extern "C" __global__ void rnn_node_bwd_f32(const float* __restrict__ ch, const float* __restrict__ h_prev, const float* __restrict__ dy, float* __restrict__ dch, float* __restrict__ dh_prev, int n, int hidden, int act) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        const size_t a_at = i + i / size_t(hidden) * size_t(hidden);
        const float b = ch[a_at + hidden];
        const float c = sigmoidf(ch[a_at]);
        const float f = node_activation(b, act);
        const float h = h_prev[i];
        const float g = dy[i];
        dch[a_at] = g * (f - h) * c * (1.0f - c);
        dch[a_at + hidden] = g * c * node_activation_derivative(b, f, act);
        dh_prev[i] = g * (1.0f - c);
    }
}
