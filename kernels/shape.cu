// shape.cu: kernels that only move elements: a buffer filled with one value (DARTS' Zero op, zero
// gradients), a rectangular window copied out of a row-major tensor (slice), and its adjoint, the
// window written back into a tensor (slice backward), from which concatenation is also built. The
// CPU reference is src/device/cpu/shape.rs; tests/kernels_shape.rs compares every kernel with it.
//
// How these kernels think
// -----------------------
// There is no arithmetic here at all, so the only cost is memory traffic, and the only job is to
// make neighbouring threads touch neighbouring addresses. Every kernel is a grid-stride loop over
// the elements of the *window* (not of the whole tensor), one element per thread per step, so
// consecutive threads read (slice) or write (slice backward) consecutive addresses along the
// innermost dimension of the window: coalesced on both sides whenever the window's rows are longer
// than a few elements.
//
// Describing any window with a few integers
// -----------------------------------------
// A window of a rank-r tensor (one range per dimension, e.g. FactorizedReduce's x[:, :, 1:, 1:] of
// NCHW) is at first r (size, start, length) triples. Two neighbouring dimensions merge into one
// when the inner one is covered whole (its runs join end to end) or the outer one is one index
// long (it only shifts the start). src/device/gpu/shape.rs merges until neither holds, so:
//
//     x[:, 2:5]        of [N, C, H, W]  ->  [N] x [C·H·W], window [0, N) x [2·H·W, 5·H·W)
//     x[:, :, 1:, 1:]  of [N, C, H, W]  ->  [N·C] x [H] x [W], window [0, NC) x [1, H) x [1, W)
//     x[a:b]           of anything      ->  one dimension, one contiguous run
//
// Any window of a tensor of rank 4 or less needs at most four merged dimensions, and so do most
// windows of higher rank; the Rust side refuses the rest. The kernels see the merged window as
// four dimensions (padded in front with length-1 ones): its lengths len1..len3 (len0 follows from
// the element count), the strides stride0..stride2 of the whole tensor (stride3 is 1), and `base`,
// the offset of the window's first element. Element i of the window, with digits (i0, i1, i2, i3)
// in the mixed radix of the lengths, sits at base + i0·stride0 + i1·stride1 + i2·stride2 + i3.
// Sizes are checked to fit an int on the Rust side, so all of this is 32-bit unsigned arithmetic
// (32-bit division is several times cheaper than 64-bit on a GPU).
//
// Concatenation as a sum of window writes
// ---------------------------------------
// concat(x_0, ..., x_k) along a dimension is [outer, Σ size_i, inner], and input i fills exactly
// the window [0, outer) x [off_i, off_i + size_i) x [0, inner) of it. The windows tile the output,
// so concatenation is one slice-backward launch per input, each writing its own window: no pointer
// arrays for a variable number of inputs, and every output element is written exactly once.
//
// Slice backward is a fill of zeros followed by the window write (two launches, the window's
// elements written twice). A one-pass kernel would test every element of the whole tensor for
// membership in the window instead; the two-pass form reuses the kernels concatenation needs.
#include "common.cuh"

// The offset in the whole tensor of element i of a window (see the header): the digits of i in
// the mixed radix (len0, len1, len2, len3), each times its dimension's stride.
__device__ __forceinline__ unsigned window_offset(unsigned i, int len1, int len2, int len3, int stride0, int stride1, int stride2, int base) {
    const unsigned i3 = i % unsigned(len3);
    i /= unsigned(len3);
    const unsigned i2 = i % unsigned(len2);
    i /= unsigned(len2);
    const unsigned i1 = i % unsigned(len1);
    const unsigned i0 = i / unsigned(len1);
    return unsigned(base) + i0 * unsigned(stride0) + i1 * unsigned(stride1) + i2 * unsigned(stride2) + i3;
}

// y[i] = value for i < n.
extern "C" __global__ void shape_fill_fwd_f32(float* __restrict__ y, float value, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = value;
    }
}

// y[i] = x[window_offset(i)] for the n elements of the window, in its row-major order.
extern "C" __global__ void shape_slice_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int n, int len1, int len2, int len3, int stride0, int stride1, int stride2, int base) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = x[window_offset(unsigned(i), len1, len2, len3, stride0, stride1, stride2, base)];
    }
}

// dx[window_offset(i)] = dy[i] for the n elements of the window; dx outside it is left as it is.
extern "C" __global__ void shape_slice_bwd_f32(const float* __restrict__ dy, float* __restrict__ dx, int n, int len1, int len2, int len3, int stride0, int stride1, int stride2, int base) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        dx[window_offset(unsigned(i), len1, len2, len3, stride0, stride1, stride2, base)] = dy[i];
    }
}
