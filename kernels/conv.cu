// conv.cu: 2-D convolution on NCHW data, forward and backward: the depthwise convolutions of the
// DARTS separable and dilated convs as direct kernels, everything else as im2col + the GEMM of
// kernels/matmul.cu. The CPU reference is src/device/cpu/conv.rs; tests/kernels_conv.rs compares
// every kernel here with it, and src/device/gpu/conv.rs holds the launch plan.
//
// Shapes: x is [N, C, H, W], the weight [Cout, Cin/groups, kh, kw], y [N, Cout, Ho, Wo]. Along each
// axis, output position o and kernel tap t read input position
//
//     i = o·stride + t·dilation − padding            (zero when i is outside [0, size))
//
// The depthwise path (groups == Cin == Cout)
// ------------------------------------------
// Each output channel sees one input channel through kh·kw weights, so a GEMM would multiply
// 1-wide matrices. Instead:
//   - forward: one thread per output element sums its kh·kw taps (a tap is a load of x that its
//     neighbours also make, so the taps mostly hit L1/L2);
//   - input gradient: one thread per input element *gathers* the output gradients that read it.
//     Input i was read by tap t of output o exactly when i + padding − t·dilation = o·stride, so
//     the thread loops over the taps, keeps those where that difference is a non-negative multiple
//     of the stride below Ho·stride, and adds w[t]·dy[o]. The scatter form (each output adds into
//     the inputs it read) would need atomics, whose order of additions changes from run to run;
//     the gather writes every element once, with its taps added in a fixed order;
//   - weight gradient: dw[c, t] = Σ over images and output positions of dy · x (the input that
//     tap t read). That is one dot product of N·Ho·Wo terms per (channel, tap), so one block per
//     (c, t): each thread sums a strided share, then a fixed warp-shuffle tree (block_reduce_sum in
//     common.cuh) adds the threads. The tree depends only on the block size, which the Rust side
//     fixes, so the bits never change.
// Both gradients come from one launch: the first blocks of its grid compute the weight gradient,
// the rest the input gradient. A launch computes up to four depthwise convolutions of one shape,
// one per row of its grid (a DARTS search edge's, stage by stage).
//
// The general path: im2col + GEMM
// -------------------------------
// A convolution of one image and channel group is a matrix product once the input is unfolded:
// the column matrix col[(c, ky, kx), (oy, ox)] = x[c, iy, ix] has Cin/groups·kh·kw rows and Ho·Wo
// columns, and y_g = W_g · col with W_g the group's [Cout/groups, Cin/groups·kh·kw] weights.
//   - im2col: one thread per element of col (for a chunk of images at once), zero off the image;
//   - forward: a batched GEMM over (image, group);
//   - input gradient: dcol = W_gᵀ · dy_g (a GEMM with A transposed by its strides), then col2im
//     folds dcol back onto the image. Like the depthwise input gradient it is a gather: one
//     thread per input element adds the dcol entries of the (tap, output) pairs that read it, in
//     tap order, with no atomics;
//   - weight gradient: per image, dW_g(n) = dy_g(n) · col(n)ᵀ (a GEMM with B transposed), into a
//     workspace of one partial gradient per image; then conv_weight_sum adds the partials in image
//     order (onto the running total of the previous chunk of images, when the batch is processed
//     in chunks to bound the workspace). Summing over images inside the GEMM would need the batch
//     in the k dimension; per-image partials keep every layout a plain strided matrix and give N
//     times more blocks to the GPU;
//   - 1×1 convolutions with stride 1 and no padding skip im2col: the image itself is the column
//     matrix (Cin/groups rows of H·W), so they are one batched GEMM each way.
//
// The bias: the forward adds it in place after the convolution (as the CPU reference does); its
// gradient, Σ over images and positions of dy, is one block tree per output channel.
#include "common.cuh"

// The input position read along axis `a` by output `o` through tap `t`, or -1 when it falls in the
// padding.
__device__ __forceinline__ int conv_input_pos(int o, int t, ConvAxis a) {
    const int i = o * a.stride + t * a.dil - a.pad;
    return (i >= 0 && i < a.size) ? i : -1;
}

// The output position along axis `a` that read input `i` through tap `t`, or -1 when no output did.
__device__ __forceinline__ int conv_output_pos(int i, int t, ConvAxis a) {
    const int shifted = i + a.pad - t * a.dil;
    if (shifted < 0 || shifted % a.stride != 0) return -1;
    const int o = shifted / a.stride;
    return o < a.out ? o : -1;
}

// ---- im2col + GEMM ----------------------------------------------------------------------------

// col[img, c, ky, kx, oy, ox] = x[n0 + img, c, iy, ix] (zero in the padding) for img < images: the
// column matrices of `images` images starting at n0, for all channels (each group's rows are
// contiguous, so this is [images, groups, Cin/groups·kh·kw, Ho·Wo]).
extern "C" __global__ void conv_im2col_fwd_f32(const float* __restrict__ x, float* __restrict__ col, int n0, int images, int channels, ConvWindow win) {
    const ConvAxis ay = win.y, ax = win.x;
    const size_t total = size_t(images) * channels * ay.kernel * ax.kernel * ay.out * ax.out;
    for (size_t e = global_thread_index(); e < total; e += global_thread_count()) {
        const int ox = int(e % ax.out);
        const int oy = int(e / ax.out % ay.out);
        const int kx = int(e / (size_t(ax.out) * ay.out) % ax.kernel);
        const int ky = int(e / (size_t(ax.out) * ay.out * ax.kernel) % ay.kernel);
        const size_t plane = e / (size_t(ax.out) * ay.out * ax.kernel * ay.kernel);  // img·C + c
        const int iy = conv_input_pos(oy, ky, ay);
        const int ix = conv_input_pos(ox, kx, ax);
        const float* src = x + (size_t(n0) * channels + plane) * ay.size * ax.size;
        col[e] = (iy >= 0 && ix >= 0) ? src[size_t(iy) * ax.size + ix] : 0.0f;
    }
}

// dx[n0 + img, c, iy, ix] = Σ over the taps (ky, kx), in order, whose window covers (iy, ix) of
// dcol[img, c, ky, kx, oy, ox]: the adjoint of im2col, as a gather (one thread per element of dx).
extern "C" __global__ void conv_col2im_bwd_f32(const float* __restrict__ col, float* __restrict__ dx, int n0, int images, int channels, ConvWindow win) {
    const ConvAxis ay = win.y, ax = win.x;
    const size_t total = size_t(images) * channels * ay.size * ax.size;
    const size_t out_plane = size_t(ay.out) * ax.out;
    for (size_t e = global_thread_index(); e < total; e += global_thread_count()) {
        const int ix = int(e % ax.size);
        const int iy = int(e / ax.size % ay.size);
        const size_t plane = e / (size_t(ax.size) * ay.size);  // img·C + c
        const float* src = col + plane * ay.kernel * ax.kernel * out_plane;
        float acc = 0.0f;
        for (int ky = 0; ky < ay.kernel; ++ky) {
            const int oy = conv_output_pos(iy, ky, ay);
            if (oy < 0) continue;
            for (int kx = 0; kx < ax.kernel; ++kx) {
                const int ox = conv_output_pos(ix, kx, ax);
                if (ox < 0) continue;
                acc += src[(size_t(ky) * ax.kernel + kx) * out_plane + size_t(oy) * ax.out + ox];
            }
        }
        dx[size_t(n0) * channels * ay.size * ax.size + e] = acc;
    }
}

// dweight[i] = Σ_j partials[j·len + i] for j = 0 .. count-1 in order, added to dweight[i] when
// `accumulate` is non-zero (the next chunk of images), else stored; for the slots
// 0 .. gridDim.y - 1 of a group of convolutions of one shape, slot s = blockIdx.y.
extern "C" __global__ void conv_weight_sum_bwd_f32(const float* __restrict__ partials0, const float* __restrict__ partials1, const float* __restrict__ partials2, const float* __restrict__ partials3, float* __restrict__ dweight0_or_null, float* __restrict__ dweight1_or_null, float* __restrict__ dweight2_or_null, float* __restrict__ dweight3_or_null, int count, int len, int accumulate) {
    const int slot = int(blockIdx.y);
    const float* partials = group_slot(slot, partials0, partials1, partials2, partials3);
    float* dweight = group_slot(slot, dweight0_or_null, dweight1_or_null, dweight2_or_null, dweight3_or_null);
    for (size_t i = global_thread_index(); i < size_t(len); i += global_thread_count()) {
        float s = partials[i];
        for (int j = 1; j < count; ++j) s += partials[size_t(j) * len + i];
        dweight[i] = accumulate ? dweight[i] + s : s;
    }
}

// ---- Depthwise --------------------------------------------------------------------------------
// Each launch computes up to GROUP_SLOTS depthwise convolutions of one shape (the same images,
// channels, input and output sizes; each its own input, weight and window), one per row of the
// grid: slot s = blockIdx.y. A DARTS search edge runs the first depthwise convolution of its four
// separable and dilated candidates, all on the same input, as one launch, and their second ones
// (the separable convolutions') as another. Slot s computes exactly what a launch of that
// convolution alone computes: the grid's x extent and the block size do not depend on the slot.
// y[n, c, oy, ox] = Σ_{ky, kx} w[c, ky, kx] · x[n, c, iy, ix], taps in order, over the taps that
// land on the image. One thread per output element.
__device__ __forceinline__ void depthwise_forward(const float* __restrict__ x, const float* __restrict__ weight, float* __restrict__ y, int images, int channels, ConvWindow win) {
    const ConvAxis ay = win.y, ax = win.x;
    const size_t total = size_t(images) * channels * ay.out * ax.out;
    for (size_t e = global_thread_index(); e < total; e += global_thread_count()) {
        const int ox = int(e % ax.out);
        const int oy = int(e / ax.out % ay.out);
        const size_t plane = e / (size_t(ax.out) * ay.out);  // n·C + c
        const float* src = x + plane * ay.size * ax.size;
        const float* wc = weight + (plane % channels) * ay.kernel * ax.kernel;
        float acc = 0.0f;
        for (int ky = 0; ky < ay.kernel; ++ky) {
            const int iy = conv_input_pos(oy, ky, ay);
            if (iy < 0) continue;
            for (int kx = 0; kx < ax.kernel; ++kx) {
                const int ix = conv_input_pos(ox, kx, ax);
                if (ix < 0) continue;
                acc += wc[ky * ax.kernel + kx] * src[size_t(iy) * ax.size + ix];
            }
        }
        y[e] = acc;
    }
}

// The forward of slots 0 .. gridDim.y - 1: slot s convolves x_s with w_s through win_s into y_s.
extern "C" __global__ void conv_depthwise_fwd_f32(const float* __restrict__ x0, const float* __restrict__ x1, const float* __restrict__ x2, const float* __restrict__ x3, const float* __restrict__ w0, const float* __restrict__ w1, const float* __restrict__ w2, const float* __restrict__ w3, float* __restrict__ y0_or_null, float* __restrict__ y1_or_null, float* __restrict__ y2_or_null, float* __restrict__ y3_or_null, int images, int channels, ConvWindow win0, ConvWindow win1, ConvWindow win2, ConvWindow win3) {
    // One copy of the loop per slot (not a select of the slot's window), so that a launch needs
    // no more registers than a single convolution does.
    const auto run = [&](const float* x, const float* w, float* y, ConvWindow win) {
        depthwise_forward(x, w, y, images, channels, win);
    };
    switch (blockIdx.y) {
        case 0: run(x0, w0, y0_or_null, win0); break;
        case 1: run(x1, w1, y1_or_null, win1); break;
        case 2: run(x2, w2, y2_or_null, win2); break;
        default: run(x3, w3, y3_or_null, win3); break;
    }
}

// dx[n, c, iy, ix] = Σ over the taps, in order, of w[c, ky, kx] · dy[n, c, oy, ox] for the output
// (oy, ox) that read (iy, ix) through that tap, if any. One thread per input element (a gather),
// in a grid-stride loop over the `blocks` blocks from `first_block` on.
__device__ __forceinline__ void depthwise_input_grad(const float* __restrict__ dy, const float* __restrict__ weight, float* __restrict__ dx, int images, int channels, ConvWindow win, int first_block, int blocks) {
    const ConvAxis ay = win.y, ax = win.x;
    const size_t total = size_t(images) * channels * ay.size * ax.size;
    const size_t threads = size_t(blocks) * blockDim.x;
    for (size_t e = size_t(blockIdx.x - first_block) * blockDim.x + threadIdx.x; e < total; e += threads) {
        const int ix = int(e % ax.size);
        const int iy = int(e / ax.size % ay.size);
        const size_t plane = e / (size_t(ax.size) * ay.size);  // n·C + c
        const float* src = dy + plane * ay.out * ax.out;
        const float* wc = weight + (plane % channels) * ay.kernel * ax.kernel;
        float acc = 0.0f;
        for (int ky = 0; ky < ay.kernel; ++ky) {
            const int oy = conv_output_pos(iy, ky, ay);
            if (oy < 0) continue;
            for (int kx = 0; kx < ax.kernel; ++kx) {
                const int ox = conv_output_pos(ix, kx, ax);
                if (ox < 0) continue;
                acc += wc[ky * ax.kernel + kx] * src[size_t(oy) * ax.out + ox];
            }
        }
        dx[e] = acc;
    }
}

// dweight[c, ky, kx] = Σ_{n, oy, ox} dy[n, c, oy, ox] · x[n, c, iy, ix] over the positions where
// the tap lands on the image. One block per (c, tap), striding over them by `blocks` (the blocks
// from 0 on); 1-D blocks of a multiple of 32 threads (the block tree needs whole warps, and
// `scratch`, WARP_SIZE floats of shared memory).
__device__ __forceinline__ void depthwise_weight_grad(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dweight, int images, int channels, ConvWindow win, int blocks, float* scratch) {
    const ConvAxis ay = win.y, ax = win.x;
    const int taps = ay.kernel * ax.kernel;
    const size_t out_plane = size_t(ay.out) * ax.out;
    const size_t terms = size_t(images) * out_plane;
    for (int job = blockIdx.x; job < channels * taps; job += blocks) {
        const int c = job / taps;
        const int ky = job % taps / ax.kernel;
        const int kx = job % ax.kernel;
        float s = 0.0f;
        for (size_t e = threadIdx.x; e < terms; e += blockDim.x) {
            const int ox = int(e % ax.out);
            const int oy = int(e / ax.out % ay.out);
            const size_t plane = e / out_plane * channels + c;  // n·C + c
            const int iy = conv_input_pos(oy, ky, ay);
            const int ix = conv_input_pos(ox, kx, ax);
            if (iy >= 0 && ix >= 0) {
                s += dy[plane * out_plane + size_t(oy) * ax.out + ox] * x[(plane * ay.size + iy) * ax.size + ix];
            }
        }
        s = block_reduce_sum(s, scratch);
        if (threadIdx.x == 0) dweight[job] = s;
    }
}

// The backward of slots 0 .. gridDim.y - 1, both gradients in one launch (a training step needs
// both from most depthwise convs, and would otherwise launch twice per convolution): in each row,
// blocks [0, weight_blocks) compute the slot's dweight, the others its dx. A gradient not wanted
// has a null output; weight_blocks is 0 when no slot wants dweight, and the grid has no dx blocks
// when none wants dx. The role is the same for every thread of a block, so the weight gradient's
// block tree sees whole blocks.
extern "C" __global__ void conv_depthwise_bwd_f32(const float* __restrict__ x0, const float* __restrict__ x1, const float* __restrict__ x2, const float* __restrict__ x3, const float* __restrict__ dy0, const float* __restrict__ dy1, const float* __restrict__ dy2, const float* __restrict__ dy3, const float* __restrict__ w0, const float* __restrict__ w1, const float* __restrict__ w2, const float* __restrict__ w3, float* __restrict__ dx0_or_null, float* __restrict__ dx1_or_null, float* __restrict__ dx2_or_null, float* __restrict__ dx3_or_null, float* __restrict__ dweight0_or_null, float* __restrict__ dweight1_or_null, float* __restrict__ dweight2_or_null, float* __restrict__ dweight3_or_null, int images, int channels, ConvWindow win0, ConvWindow win1, ConvWindow win2, ConvWindow win3, int weight_blocks) {
    __shared__ float scratch[WARP_SIZE];
    // One copy of the work per slot, as in the forward.
    const auto run = [&](const float* x, const float* dy, const float* w, float* dx, float* dweight, ConvWindow win) {
        if (int(blockIdx.x) < weight_blocks) {
            if (dweight) depthwise_weight_grad(x, dy, dweight, images, channels, win, weight_blocks, scratch);
        } else if (dx) {
            depthwise_input_grad(dy, w, dx, images, channels, win, weight_blocks, int(gridDim.x) - weight_blocks);
        }
    };
    switch (blockIdx.y) {
        case 0: run(x0, dy0, w0, dx0_or_null, dweight0_or_null, win0); break;
        case 1: run(x1, dy1, w1, dx1_or_null, dweight1_or_null, win1); break;
        case 2: run(x2, dy2, w2, dx2_or_null, dweight2_or_null, win2); break;
        default: run(x3, dy3, w3, dx3_or_null, dweight3_or_null, win3); break;
    }
}

// ---- Bias -------------------------------------------------------------------------------------

// y[n, c, :] += bias[c] on [images, channels, plane] data, in place.
extern "C" __global__ void conv_bias_fwd_f32(float* __restrict__ y, const float* __restrict__ bias, int images, int channels, int plane) {
    const size_t total = size_t(images) * channels * plane;
    for (size_t i = global_thread_index(); i < total; i += global_thread_count()) {
        y[i] += bias[i / plane % channels];
    }
}

// dbias[c] = Σ_{n, p} dy[n, c, p]: one block per channel (grid-stride), a strided share per
// thread, then the fixed block tree. 1-D blocks of a multiple of 32 threads.
extern "C" __global__ void conv_bias_bwd_f32(const float* __restrict__ dy, float* __restrict__ dbias, int images, int channels, int plane) {
    __shared__ float scratch[WARP_SIZE];
    const size_t terms = size_t(images) * plane;
    for (int c = blockIdx.x; c < channels; c += gridDim.x) {
        float s = 0.0f;
        for (size_t e = threadIdx.x; e < terms; e += blockDim.x) {
            s += dy[(e / plane * channels + c) * plane + e % plane];
        }
        s = block_reduce_sum(s, scratch);
        if (threadIdx.x == 0) dbias[c] = s;
    }
}
