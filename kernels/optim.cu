// optim.cu: fused optimizer updates (SGD with momentum, Adam, ASGD) and gradient clipping by the
// global norm. The CPU references are the optimizers themselves, src/optim/{sgd,adam,asgd,clip}.rs
// (PyTorch semantics); tests/kernels_optim.rs runs a few steps of each on the same data and
// compares parameters and state.
//
// Why fuse
// --------
// An optimizer step is a handful of elementwise operations per parameter: add the weight decay to
// the gradient, update one or two moment buffers, update the weight. Written as separate kernels,
// each would read and write whole buffers again: Adam would move ~10 floats per parameter instead
// of the 7 it needs (read w, g, m, v; write w, m, v). Here one thread does the whole update of one
// element, with every intermediate in registers, so the step costs one pass over memory. Updates
// are in place: the kernels write the weights and the optimizer state they are given.
//
// Matching the CPU bit for bit
// ----------------------------
// The CPU optimizers round after every float operation (`m = b1 * m + (1 - b1) * g` is two
// products and a sum, each rounded). nvcc would contract such expressions into fused multiply-adds
// (one rounding), so these kernels spell every product and sum with __fmul_rn / __fadd_rn, which
// nvcc never contracts; division and sqrtf are IEEE correctly rounded without fast-math. So SGD,
// ASGD and Adam give the CPU's bits exactly. The scalar factors the CPU computes in double (Adam's
// bias corrections, from the step count) are computed the same way here, once per thread.
//
// The kernels are named `_fwd` only to keep the `<family>_<op>_<dir>` grammar: an update has no
// backward.
//
// The global gradient norm
// ------------------------
// clip_grad_norm needs sqrt(sum of g^2) over every element of every gradient. Pass 1 is one
// multi-tensor launch (common.cuh) over all the gradients: each block reduces the g^2 of its chunk
// of one gradient in double with the fixed tree of block_reduce_sum and writes a partial (as
// hi + lo floats, ~48 bits of the double) into its slot of one workspace. Pass 2, one block, adds
// all the partials in a fixed tree and writes float(sqrt(s)). The chunks depend only on the
// buffers' lengths, so the order of additions never changes: the same bits on every run and every
// GPU, and no float atomics. The clipping itself (coef = max_norm / (norm + 1e-6), as the CPU
// computes it on the host from the norm it returns) is one more multi-tensor launch.
//
// Why multi-tensor
// ----------------
// A DARTS search network has about 1,400 parameter tensors, most of them small. One launch per
// tensor for the update, the norm and the clipping was 4,200 launches a step, each costing a few
// microseconds of host time whatever its size; with a table of the buffers' addresses, it is three.
// SGD, which every CNN search and evaluation step runs, takes the table; Adam and ASGD (a handful
// of tensors in the recurrent searches) stay one launch per tensor.
#include "common.cuh"

// ---- SGD (PyTorch: dampening 0, no Nesterov) ---------------------------------------------------

// Every parameter in one launch (a multi-tensor table, common.cuh; slots w, g, b): d = g + wd w;
// with momentum mu (b not null): b <- d on the first step, else b <- mu b + d, and d = b; then
// w <- w - lr d.
extern "C" __global__ void optim_sgd_fwd_f32(const unsigned long long* __restrict__ table, int tensors, int chunk_len, float lr, float momentum, float weight_decay, int first) {
    const MultiChunk c = multi_chunk(table, tensors, chunk_len);
    float* w = multi_buffer<float>(c, 0);
    const float* g = multi_buffer<const float>(c, 1);
    float* b = multi_buffer<float>(c, 2);
    for (size_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x) {
        float d = g[i];
        if (weight_decay != 0.0f) d = __fadd_rn(d, __fmul_rn(weight_decay, w[i]));
        if (b) {
            if (!first) d = __fadd_rn(__fmul_rn(momentum, b[i]), d);
            b[i] = d;
        }
        w[i] = __fadd_rn(w[i], __fmul_rn(-lr, d));
    }
}

// ---- Adam (coupled L2 weight decay, no AMSGrad) ------------------------------------------------

// Step `step` (from 1): g <- g + wd w; m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
// w <- w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
extern "C" __global__ void optim_adam_fwd_f32(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v, float lr, float beta1, float beta2, float eps, float weight_decay, int step, int n) {
    // The bias corrections in double, as PyTorch computes them in Python floats.
    const double t = double(step);
    const double bias1 = 1.0 - pow(double(beta1), t);
    const double bias2 = 1.0 - pow(double(beta2), t);
    const float step_size = float(double(lr) / bias1);
    const float bias2_sqrt = float(sqrt(bias2));
    const float keep1 = 1.0f - beta1;
    const float keep2 = 1.0f - beta2;
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        float grad = g[i];
        if (weight_decay != 0.0f) grad = __fadd_rn(grad, __fmul_rn(weight_decay, w[i]));
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(keep1, grad));
        const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(keep2, grad), grad));
        m[i] = mi;
        v[i] = vi;
        const float denominator = __fadd_rn(__fdiv_rn(sqrtf(vi), bias2_sqrt), eps);
        w[i] = __fadd_rn(w[i], __fmul_rn(-step_size, __fdiv_rn(mi, denominator)));
    }
}

// ---- ASGD (averaged SGD) -----------------------------------------------------------------------

// g <- g + wd w; w <- w decay - eta g (decay = 1 - lambd eta); then ax <- w when mu == 1 (the
// average restarts), else ax <- ax + (w - ax) mu.
extern "C" __global__ void optim_asgd_fwd_f32(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ ax, float decay, float eta, float mu, float weight_decay, int n) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        float grad = g[i];
        if (weight_decay != 0.0f) grad = __fadd_rn(grad, __fmul_rn(weight_decay, w[i]));
        const float wi = __fadd_rn(__fmul_rn(w[i], decay), __fmul_rn(-eta, grad));
        w[i] = wi;
        ax[i] = mu == 1.0f ? wi : __fadd_rn(ax[i], __fmul_rn(__fsub_rn(wi, ax[i]), mu));
    }
}

// ---- Gradient clipping by the global norm ------------------------------------------------------

// Pass 1 over every gradient in one launch (a multi-tensor table, common.cuh; slot 0 is g): block
// b writes the sum of g^2 over its chunk to partials[2 b] (hi) and the next slot (lo). 1-D blocks
// of a multiple of 32 threads.
extern "C" __global__ void optim_grad_norm_partial_fwd_f32(const unsigned long long* __restrict__ table, float* __restrict__ partials, int tensors, int chunk_len) {
    __shared__ double scratch[WARP_SIZE];
    const MultiChunk c = multi_chunk(table, tensors, chunk_len);
    const float* g = multi_buffer<const float>(c, 0);
    double s = 0.0;
    for (size_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x) {
        const double v = double(g[i]);
        s += v * v;  // the square of a float is exact in double
    }
    s = block_reduce_sum(s, scratch);
    if (threadIdx.x == 0) {
        const size_t slot = 2 * size_t(blockIdx.x);
        const float hi = float(s);
        partials[slot] = hi;
        partials[slot + 1] = float(s - double(hi));
    }
}

// Pass 2: one block adds the p partials and writes norm[0] = sqrt(sum).
extern "C" __global__ void optim_grad_norm_final_fwd_f32(const float* __restrict__ partials, float* __restrict__ norm, int p) {
    __shared__ double scratch[WARP_SIZE];
    double s = 0.0;
    for (int b = threadIdx.x; b < p; b += blockDim.x) {
        s += double(partials[2 * b]) + double(partials[2 * b + 1]);
    }
    s = block_reduce_sum(s, scratch);
    if (threadIdx.x == 0 && blockIdx.x == 0) norm[0] = float(sqrt(s));
}

// The clipping: y = x * factor for every gradient in one launch (a multi-tensor table; slots x,
// y), rounded once as the CPU's Tensor::scaled.
extern "C" __global__ void optim_scale_fwd_f32(const unsigned long long* __restrict__ table, int tensors, int chunk_len, float factor) {
    const MultiChunk c = multi_chunk(table, tensors, chunk_len);
    const float* x = multi_buffer<const float>(c, 0);
    float* y = multi_buffer<float>(c, 1);
    for (size_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x) {
        y[i] = __fmul_rn(x[i], factor);
    }
}
