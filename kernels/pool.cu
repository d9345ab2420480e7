// pool.cu: max pooling (with its argmax), average pooling that does not count padding, and global
// average pooling, forward and backward, on contiguous NCHW data. The CPU reference is
// src/device/cpu/pool.rs; tests/kernels_pool.rs compares every kernel here with it.
//
// The geometry
// ------------
// `planes` = N * C independent planes of h x w elements. A square window of side `ksize` moves by
// `stride` over the plane padded by `padding` virtual elements on every side, so output (oy, ox)
// covers the input rows oy*stride - padding .. + ksize - 1 (and likewise for columns); rows and
// columns outside 0..h, 0..w are padding. out_h = (h + 2 padding - ksize) / stride + 1.
//
// Forward: one thread per output
// ------------------------------
// Every output reads its own ksize^2 window (9 elements for DARTS' 3x3 pools) and writes one value,
// so the forward kernels are a grid-stride loop over outputs. Neighbouring threads own neighbouring
// outputs of a row, whose windows overlap: the loads coalesce and the overlap is served by L1, so
// these kernels run at memory speed without staging tiles in shared memory. Every size fits in an
// int (the Rust side checks), so the per-element index math (a division per coordinate) runs in
// 32-bit unsigned arithmetic: a 64-bit division costs several times more on a GPU.
//
// The window is walked in row-major order, exactly as the CPU walks its taps, so the results are
// the same bits:
// - max: padding counts as -inf; the best value starts at the window's first element and an element
//   replaces it when it is larger, or when it is NaN (so a NaN wins, as in PyTorch, and among NaNs
//   the last one). The argmax is the winner's offset iy * w + ix within its plane; when the best is
//   -inf (a window of -inf and padding), it is the window's first in-image element, as PyTorch and
//   the CPU report it.
// - average: the sum adds the window's elements in order, padding as +0, and divides by the number
//   of in-image elements (count_include_pad = false).
//
// Backward: gather, not scatter
// -----------------------------
// The textbook backward scatters: each output adds its gradient into the input elements of its
// window, which on a GPU means float atomicAdd where windows overlap, and atomics add in whatever
// order the hardware picks, so two runs round differently. Here each input element instead
// *gathers*: one thread per input element visits the few outputs whose windows contain it (at most
// ceil(ksize / stride)^2 of them), reads their gradients and adds them up itself, in a fixed order.
// No atomics, no races, the same bits every run, and every dx element is written exactly once (so
// dx needs no zeroing pass either).
//
// The windows containing padded row py = iy + padding are those with
//     oy * stride <= py <= oy * stride + ksize - 1,   i.e.   ceil((py - ksize + 1) / stride) <= oy <= py / stride,
// clipped to 0 <= oy < out_h, and likewise for columns. Within that range:
// - max: output o contributes dy[o] when argmax[o] is this element. The CPU adds in output order, so
//   the loop runs oy, ox upwards.
// - average: output o contributes dy[o] / count[o]. The CPU adds tap by tap in row-major window
//   order; tap (ky, kx) of the window whose top-left is (oy, ox) * stride lands on this element when
//   ky = py - oy * stride, so increasing ky is decreasing oy: the loop runs oy, ox downwards.
// Gathering reads argmax/dy a few times over (from cache) instead of writing dx several times:
// the right trade on a GPU, where writes that collide are the expensive part.
//
// Global average pooling: one block per plane
// -------------------------------------------
// The mean of each plane is a reduction: the threads of a block stride over the plane summing in
// double, then combine with the fixed-shape block tree of common.cuh, and thread 0 divides and
// rounds once to float, as the CPU (which also sums in f64) does. The Rust side picks the block
// size from the plane size alone, so the order of additions never depends on the GPU. Its backward
// is a plain map: every element of plane i gets dy[i] / plane.
#include "common.cuh"

// The in-image extent [lo, hi) of the window that starts at `start` (which may be negative) along
// an axis of `size` elements.
__device__ __forceinline__ int window_lo(int start) { return max(start, 0); }
__device__ __forceinline__ int window_hi(int start, int ksize, int size) { return min(start + ksize, size); }

// The outputs along one axis whose windows contain padded coordinate `padded`: [lo, hi].
__device__ __forceinline__ int first_window(int padded, int ksize, int stride) {
    return padded >= ksize ? (padded - ksize + stride) / stride : 0;
}
__device__ __forceinline__ int last_window(int padded, int stride, int outs) {
    return min(padded / stride, outs - 1);
}

// ---- Max and average pooling -------------------------------------------------------------------
// A DARTS search edge max-pools and average-pools the same input through the same 3x3 window, so
// each kernel below does either or both: the forward of one output reads its window once for
// both, and the backward of one input element gathers both gradients. A result not wanted has a
// null pointer (uniform over the launch, so the branch is free); each result has the bits of the
// pool computed alone.

// Max of the window at (y0, x0) (its top-left corner, which may lie in the padding) of a plane:
// the value, and the winner's offset iy * w + ix in the plane.
__device__ __forceinline__ void max_window(const float* plane, int y0, int x0, int h, int w, int ksize, float& best, unsigned& argmax) {
    best = 0.0f;
    int best_tap = 0;
    for (int ky = 0; ky < ksize; ++ky) {
        const int iy = y0 + ky;
        for (int kx = 0; kx < ksize; ++kx) {
            const int ix = x0 + kx;
            const bool inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
            const float v = inside ? plane[iy * w + ix] : -INFINITY;
            const int tap = ky * ksize + kx;
            if (tap == 0 || v > best || v != v) {  // v != v: v is NaN
                best = v;
                best_tap = tap;
            }
        }
    }
    argmax = best == -INFINITY ? unsigned(window_lo(y0) * w + window_lo(x0))
                               : unsigned((y0 + best_tap / ksize) * w + x0 + best_tap % ksize);
}

// The number of in-image elements of the window of output (oy, ox), as a float.
__device__ __forceinline__ float window_count(int oy, int ox, int h, int w, int ksize, int stride, int padding) {
    const int y0 = oy * stride - padding;
    const int x0 = ox * stride - padding;
    const int rows = window_hi(y0, ksize, h) - window_lo(y0);
    const int cols = window_hi(x0, ksize, w) - window_lo(x0);
    return float(rows * cols);
}

// Sum of the in-image elements of the window at (y0, x0) of a plane, in row-major window order.
// Padding adds +0, as in the CPU's padded plane: the sum starts at the first tap's value and adds
// the others in order, so even the sign of a zero sum agrees.
__device__ __forceinline__ float window_sum(const float* plane, int y0, int x0, int h, int w, int ksize) {
    float sum = 0.0f;
    for (int ky = 0; ky < ksize; ++ky) {
        const int iy = y0 + ky;
        for (int kx = 0; kx < ksize; ++kx) {
            const int ix = x0 + kx;
            const bool inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
            const float v = inside ? plane[iy * w + ix] : 0.0f;
            sum = (ky == 0 && kx == 0) ? v : sum + v;
        }
    }
    return sum;
}

// max[plane, oy, ox] = max of the window and argmax[plane, oy, ox] = its offset iy * w + ix in the
// plane (both or neither given); avg[plane, oy, ox] = (sum of the window's in-image elements) /
// their count.
extern "C" __global__ void pool_max_avg_fwd_f32(const float* __restrict__ x, float* __restrict__ max_or_null, unsigned* __restrict__ argmax_or_null, float* __restrict__ avg_or_null, int planes, int h, int w, int out_h, int out_w, int ksize, int stride, int padding) {
    const size_t outs = size_t(out_h) * out_w;
    const size_t n = size_t(planes) * outs;
    for (size_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const unsigned u = unsigned(i);  // i < n, which fits in an int
        const int ox = int(u % unsigned(out_w));
        const int oy = int(u / unsigned(out_w) % unsigned(out_h));
        const float* plane = x + size_t(u / unsigned(outs)) * h * w;
        const int y0 = oy * stride - padding;
        const int x0 = ox * stride - padding;
        if (max_or_null && argmax_or_null) {
            float best;
            unsigned argmax;
            max_window(plane, y0, x0, h, w, ksize, best, argmax);
            max_or_null[i] = best;
            argmax_or_null[i] = argmax;
        }
        if (avg_or_null) avg_or_null[i] = window_sum(plane, y0, x0, h, w, ksize) / window_count(oy, ox, h, w, ksize, stride, padding);
    }
}

// dx_max[plane, iy, ix] = sum of dmax[o] over the outputs o whose argmax is this element, in output
// order; dx_avg[plane, iy, ix] = sum of davg[o] / count[o] over the outputs o whose windows hold
// this element, in the CPU's tap order (oy, ox downwards). Each where its gradient (and, for the
// max, the argmax) is given.
extern "C" __global__ void pool_max_avg_bwd_f32(const float* __restrict__ dmax_or_null, const unsigned* __restrict__ argmax_or_null, const float* __restrict__ davg_or_null, float* __restrict__ dx_max_or_null, float* __restrict__ dx_avg_or_null, int planes, int h, int w, int out_h, int out_w, int ksize, int stride, int padding) {
    const size_t plane_len = size_t(h) * w;
    const size_t n = size_t(planes) * plane_len;
    const bool max_wanted = dmax_or_null && argmax_or_null && dx_max_or_null;
    const bool avg_wanted = davg_or_null && dx_avg_or_null;
    for (size_t i = global_thread_index(); i < n; i += global_thread_count()) {
        const unsigned u = unsigned(i);  // i < n, which fits in an int
        const unsigned offset = u % unsigned(plane_len);
        const int iy = int(offset / unsigned(w));
        const int ix = int(offset % unsigned(w));
        const size_t base = size_t(u / unsigned(plane_len)) * out_h * out_w;
        const int oy_lo = first_window(iy + padding, ksize, stride);
        const int oy_hi = last_window(iy + padding, stride, out_h);
        const int ox_lo = first_window(ix + padding, ksize, stride);
        const int ox_hi = last_window(ix + padding, stride, out_w);
        if (max_wanted) {
            float acc = 0.0f;
            for (int oy = oy_lo; oy <= oy_hi; ++oy) {
                for (int ox = ox_lo; ox <= ox_hi; ++ox) {
                    const size_t o = base + size_t(oy) * out_w + ox;
                    if (argmax_or_null[o] == offset) acc += dmax_or_null[o];
                }
            }
            dx_max_or_null[i] = acc;
        }
        if (avg_wanted) {
            float acc = 0.0f;
            for (int oy = oy_hi; oy >= oy_lo; --oy) {
                for (int ox = ox_hi; ox >= ox_lo; --ox) {
                    const float share = davg_or_null[base + size_t(oy) * out_w + ox] / window_count(oy, ox, h, w, ksize, stride, padding);
                    acc += share;
                }
            }
            dx_avg_or_null[i] = acc;
        }
    }
}

// ---- Global average pooling -------------------------------------------------------------------

// y[p] = mean of plane p (plane_len elements), summed in double. One block per plane (grid-stride
// over planes); 1-D blocks of a multiple of 32 threads.
extern "C" __global__ void pool_global_avg_fwd_f32(const float* __restrict__ x, float* __restrict__ y, int planes, int plane_len) {
    __shared__ double scratch[WARP_SIZE];
    for (int p = blockIdx.x; p < planes; p += gridDim.x) {
        const float* mine = x + size_t(p) * plane_len;
        double s = 0.0;
        for (int j = threadIdx.x; j < plane_len; j += blockDim.x) {
            s += double(mine[j]);
        }
        s = block_reduce_sum(s, scratch);
        if (threadIdx.x == 0) {
            y[p] = float(s / double(plane_len));
        }
    }
}

// dx[p, j] = dy[p] / plane_len
extern "C" __global__ void pool_global_avg_bwd_f32(const float* __restrict__ dy, float* __restrict__ dx, int planes, int plane_len) {
    const size_t n = size_t(planes) * plane_len;
    for (size_t i = global_thread_index(); i < n; i += global_thread_count()) {
        dx[i] = dy[unsigned(i) / unsigned(plane_len)] / float(plane_len);
    }
}
