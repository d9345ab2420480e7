// batchnorm.cu: batch normalisation on [N, C, HW] data (NCHW images, or [N, C] with HW = 1):
// the per-channel batch statistics, the normalisation, the input gradient in its compact form,
// the per-channel gradient sums that give dgamma and dbeta, the running-statistics update, and
// the backward of a DARTS mixed op over batch-normalised candidates (the last section).
// The CPU reference is src/device/cpu/batchnorm.rs, with the per-channel arithmetic of
// src/ops/batchnorm.rs (whose module comment derives the backward); tests/kernels_batchnorm.rs
// compares every kernel here with them.
//
// The layout, and why the reductions are the interesting part
// ------------------------------------------------------------
// Channel c of the batch is not one contiguous run: it is N runs of HW elements, one per sample,
// at x[(s * C + c) * HW ...]. Batch norm needs two kinds of passes over it:
// - per-channel reductions over M = N * HW elements (the mean and variance in the forward, sum(dy)
//   and sum(dy * xhat) in the backward);
// - elementwise maps that need the reduction's result (y = x * scale[c] + shift[c], and the input
//   gradient).
// With DARTS' C = 16 channels and M = 64 * 32 * 32 = 65536, one block per channel would leave most
// of a 132-SM GPU idle, so each channel is split over P blocks, in two passes (two launches),
// llm.c style but without float atomics:
//
//     pass 1, grid (P, C): block (b, c) sums its grid-stride share of channel c in double, reduces
//                          over the block with the fixed tree of common.cuh, and stores the block's
//                          partial sums, as doubles, in a workspace;
//     pass 2, grid (P, C): every block (b, c) adds channel c's P partials (in double, the same
//                          fixed tree in every block, so they all agree to the bit), finishes the
//                          channel's arithmetic, and applies the elementwise map to its share;
//                          block 0 also writes the per-channel results.
//
// Adding P partials again in each of P blocks costs P^2 reads of the workspace per channel, about
// a thousand for M = 65536 (P = 32), against M reads of the data: it saves a launch (one per batch
// norm and direction, a few thousand per search step) for next to nothing. The eval-mode forward,
// with nothing to reduce, is a per-channel kernel and an elementwise one.
//
// Kernel buffers are declared with 32-bit element types (build.rs generates the launchers from
// them), so the workspace is an `unsigned*` holding each double as two words; allocations are
// aligned to at least 16 bytes, so viewing it as doubles is safe. Keeping the partials in double,
// rather than rounding them to floats, loses nothing between the passes.
//
// P and the block size depend only on M (the Rust side picks them), never on the GPU, so the order
// of every addition is fixed: two runs, or two GPUs, give the same bits. Summing in double costs
// little (the loops are memory-bound) and keeps these sums as accurate as the CPU's f64 sums; the
// results differ from the CPU's by double rounding errors alone, far below a float's rounding.
//
// The variance in one pass over the data
// --------------------------------------
// The CPU computes the mean, then sum((x - mean)^2): two passes over x. The one-pass textbook form
// var = (sum x^2 - (sum x)^2 / M) / M reads x once but cancels catastrophically when |mean| >> std
// (a channel at 1000 +- 0.01 loses every digit). Shifting the data first fixes that: with K any
// value of the channel (we take its first element), d = x - K,
//     mean = K + sum(d) / M,      m2 = sum((x - mean)^2) = sum(d^2) - (sum d)^2 / M,
// and since (K - mean)^2 is one term of m2, sum(d^2) = m2 + M (K - mean)^2 <= (M + 1) m2: the
// subtraction loses at most log2(M + 1) bits, about 16 for M = 65536, of the 53 a double has. The
// result is still ~1e-11 relative or better, well inside a float's rounding, and x is read once.
// (Welford's update is the other classic fix; it costs a division per element.)
//
// The backward
// ------------
// In training mode, with xhat = (x - mean) * inv_std and k = gamma * inv_std,
//     dx = k * (dy - mean(dy) - xhat * mean(dy * xhat)),     dgamma = sum(dy * xhat),   dbeta = sum(dy),
// the sums and means over the channel's M elements. The two sums are one two-pass reduction (the
// same shape as the statistics, now summing two products per element) whose second pass writes
// dx. In eval mode dx = k * dy, the forward's map with a zero shift.
//
// Batch norm followed by ReLU
// ---------------------------
// DARTS' separable convolutions apply ReLU right after a batch norm. The forward kernels can
// apply it to their output (z = relu(y)), and the backward kernels can take that output and use
// dy * [z > 0] for dy (the ReLU's backward: z > 0 exactly where y > 0): the pair costs no launch
// of its own and no tensor for y.
//
// Matching the CPU bit for bit where we can
// -----------------------------------------
// The elementwise passes evaluate exactly the CPU's float expressions in the CPU's order, spelled
// with __fmul_rn / __fadd_rn / __fsub_rn where nvcc would otherwise fuse a multiply and an add into
// one fma (rounded once, unlike the CPU): their results are the CPU's bits. The per-channel
// finishing arithmetic (1 / sqrt(var + eps), the running-average blend) is done in double as the
// CPU does it, with correctly rounded IEEE operations, so it too gives the CPU's bits from the same
// inputs.
#include "common.cuh"

// The workspace of partial sums as the doubles it holds (two 32-bit words each).
__device__ __forceinline__ double* as_doubles(unsigned* words) { return reinterpret_cast<double*>(words); }
__device__ __forceinline__ const double* as_doubles(const unsigned* words) { return reinterpret_cast<const double*>(words); }

// Element j (0 <= j < n * hw) of channel `ch`: sample j / hw, position j % hw. The channel's
// M = n * hw elements fit in an int (the Rust side checks), so 32-bit division is enough.
__device__ __forceinline__ size_t channel_element(unsigned j, int c, int hw, int ch) {
    const unsigned sample = j / unsigned(hw);
    const unsigned at = j - sample * unsigned(hw);
    return (size_t(sample) * c + ch) * hw + at;
}

// The forward's output: y, or relu(y) (NaN kept, as the ReLU kernels do).
__device__ __forceinline__ float activate(float y, int relu) { return relu ? reluf(y) : y; }

// The gradient at the normalisation's output, from dy at the op's output: dy itself, or, where a
// ReLU followed (its output given), dy * [relu_out > 0], as the ReLU's backward computes it.
__device__ __forceinline__ float output_grad(const float* dy, const float* relu_out_or_null, size_t at) {
    return relu_out_or_null && !(relu_out_or_null[at] > 0.0f) ? 0.0f : dy[at];
}

// The end of a first reduction pass: sums the pair (a, b) over the block (the fixed tree of
// common.cuh) and has thread 0 store it as pair `pair` of the workspace of doubles.
__device__ __forceinline__ void store_block_pair(unsigned* partials, size_t pair, double a, double b, double* scratch) {
    a = block_reduce_sum(a, scratch);
    b = block_reduce_sum(b, scratch);
    if (threadIdx.x == 0) {
        double* slot = as_doubles(partials) + 2 * pair;
        slot[0] = a;
        slot[1] = b;
    }
}

// ---- Batch statistics -------------------------------------------------------------------------

// Pass 1 of the statistics, of up to eight inputs x0..x7 of one layout at once (a lone batch norm
// passes one; a DARTS edge its normalised candidates, one launch for all). Grid (P, C', B), 1-D
// blocks of a multiple of 32 threads; block (b, ch, z) writes the doubles sum(d), sum(d^2) over its
// share of channel ch of x_z at 2 ((z C + ch) P + b) of the workspace, d = x_z - x_z[first of ch];
// so input z's partials start at word 4 z C P.
extern "C" __global__ void batchnorm_moments_partial_fwd_f32(const float* __restrict__ x0, const float* __restrict__ x1, const float* __restrict__ x2, const float* __restrict__ x3, const float* __restrict__ x4, const float* __restrict__ x5, const float* __restrict__ x6, const float* __restrict__ x7, unsigned* __restrict__ partials, int n, int c, int hw) {
    __shared__ double scratch[WARP_SIZE];
    const float* x = slot_of(int(blockIdx.z), x0, x1, x2, x3, x4, x5, x6, x7);
    const size_t m = size_t(n) * hw;
    for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
        const double shift = double(x[size_t(ch) * hw]);
        double s1 = 0.0;
        double s2 = 0.0;
        for (size_t j = global_thread_index(); j < m; j += global_thread_count()) {
            const double d = double(x[channel_element(unsigned(j), c, hw, ch)]) - shift;
            s1 += d;
            s2 += d * d;
        }
        store_block_pair(partials, (size_t(blockIdx.z) * c + ch) * gridDim.x + blockIdx.x, s1, s2, scratch);
    }
}

// The per-channel affine map of y = gamma (x - mean) inv_std + beta = x * scale + shift:
// scale = gamma * inv_std, shift = beta - mean * scale, with gamma = 1 and beta = 0 where they are
// null (no affine parameters): the CPU's float expressions, so the CPU's bits.
__device__ __forceinline__ void affine_coefficients(int ch, float mu, float s, const float* gamma_or_null, const float* beta_or_null, float& scale, float& shift) {
    const float g = gamma_or_null ? gamma_or_null[ch] : 1.0f;
    const float b = beta_or_null ? beta_or_null[ch] : 0.0f;
    scale = g * s;
    shift = __fsub_rn(b, __fmul_rn(mu, scale));
}

// Adds channel ch's p partial (sum, sum of squares) pairs of a pass 1, in the same fixed tree in
// every block, and hands the two totals to every thread of the block (through `shared`).
__device__ __forceinline__ void channel_totals(const unsigned* partials, int p, int ch, double* scratch, double* shared, double& s1, double& s2) {
    const double* mine = as_doubles(partials) + 2 * size_t(ch) * p;
    double a = 0.0;
    double b = 0.0;
    for (int k = threadIdx.x; k < p; k += blockDim.x) {
        a += mine[2 * k];
        b += mine[2 * k + 1];
    }
    a = block_reduce_sum(a, scratch);
    b = block_reduce_sum(b, scratch);
    if (threadIdx.x == 0) {
        shared[0] = a;
        shared[1] = b;
    }
    __syncthreads();
    s1 = shared[0];
    s2 = shared[1];
    __syncthreads();  // before the next channel overwrites `shared`
}

// A channel's batch statistics from its p partials of pass 1 (channel_totals, the same tree in
// every block): mean = K + sum(d) / M and inv_std = 1 / sqrt(m2 / M + eps) (the biased variance
// normalises, as in PyTorch), and m2 = sum((x - mean)^2) for the running variance; `first` is K,
// the channel's first value.
struct ChannelStats {
    float mean;
    float inv_std;
    double m2;
};

__device__ __forceinline__ ChannelStats channel_statistics(const unsigned* partials, int p, int ch, double first, double m, float eps, double* scratch, double* totals) {
    double s1;
    double s2;
    channel_totals(partials, p, ch, scratch, totals, s1, s2);
    // Rounding can leave a zero-variance channel a hair below zero.
    const double m2 = fmax(s2 - s1 * s1 / m, 0.0);
    return {float(first + s1 / m), float(1.0 / sqrt(m2 / m + double(eps))), m2};
}

// PyTorch's running update of channel ch, into new buffers, in double as the CPU does it (the old
// statistics stay as they are, so nothing needs copying first): new = (1 - momentum) running +
// momentum batch, the variance from the unbiased batch variance m2 / (M - 1) rounded to float.
__device__ __forceinline__ void update_running(int ch, const ChannelStats& st, double m, float momentum, const float* running_mean, const float* running_var, float* new_mean, float* new_var) {
    const double keep = 1.0 - double(momentum);
    const float var_unbiased = float(st.m2 / (m - 1.0));
    new_mean[ch] = float(__dadd_rn(__dmul_rn(keep, double(running_mean[ch])), __dmul_rn(double(momentum), double(st.mean))));
    new_var[ch] = float(__dadd_rn(__dmul_rn(keep, double(running_var[ch])), __dmul_rn(double(momentum), double(var_unbiased))));
}

// Pass 2 of the training forward: the statistics and all that follows from them, and the
// normalisation itself. Grid (P, C') and blocks as pass 1. Every block computes channel ch's
// statistics (channel_statistics) and the affine coefficients; then it writes y = x * scale +
// shift (or relu(y), with `relu` non-zero) over its grid-stride share of the channel.
// Block 0 of the channel also writes mean[ch], inv_std[ch] and scale[ch] (what the backward
// needs) and, with running statistics (all four running pointers given), their update
// (update_running). M >= 2.
extern "C" __global__ void batchnorm_normalize_fwd_f32(const float* __restrict__ x, const unsigned* __restrict__ partials, const float* __restrict__ gamma_or_null, const float* __restrict__ beta_or_null, const float* __restrict__ running_mean_or_null, const float* __restrict__ running_var_or_null, float* __restrict__ y, float* __restrict__ mean, float* __restrict__ inv_std, float* __restrict__ scale, float* __restrict__ new_mean_or_null, float* __restrict__ new_var_or_null, int p, int n, int c, int hw, float eps, float momentum, int relu) {
    __shared__ double scratch[WARP_SIZE];
    __shared__ double totals[2];
    const double m = double(n) * double(hw);
    for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
        const ChannelStats st = channel_statistics(partials, p, ch, double(x[size_t(ch) * hw]), m, eps, scratch, totals);
        float a;
        float shift;
        affine_coefficients(ch, st.mean, st.inv_std, gamma_or_null, beta_or_null, a, shift);
        if (blockIdx.x == 0 && threadIdx.x == 0) {
            mean[ch] = st.mean;
            inv_std[ch] = st.inv_std;
            scale[ch] = a;
            if (running_mean_or_null && running_var_or_null && new_mean_or_null && new_var_or_null) {
                update_running(ch, st, m, momentum, running_mean_or_null, running_var_or_null, new_mean_or_null, new_var_or_null);
            }
        }
        for (size_t j = global_thread_index(); j < size_t(m); j += global_thread_count()) {
            const size_t at = channel_element(unsigned(j), c, hw, ch);
            y[at] = activate(__fadd_rn(__fmul_rn(x[at], a), shift), relu);
        }
    }
}

// Eval mode's per-channel numbers, from the running statistics: inv_std[ch] = 1 / sqrt(var[ch] +
// eps) in double, and the affine coefficients as in training.
extern "C" __global__ void batchnorm_coefficients_fwd_f32(const float* __restrict__ mean, const float* __restrict__ var, const float* __restrict__ gamma_or_null, const float* __restrict__ beta_or_null, float* __restrict__ inv_std, float* __restrict__ scale, float* __restrict__ shift, int c, float eps) {
    for (size_t ch = global_thread_index(); ch < size_t(c); ch += global_thread_count()) {
        const float s = float(1.0 / sqrt(double(var[ch]) + double(eps)));
        inv_std[ch] = s;
        affine_coefficients(int(ch), mean[ch], s, gamma_or_null, beta_or_null, scale[ch], shift[ch]);
    }
}

// ---- Normalisation ----------------------------------------------------------------------------

// y = x * scale[ch] + shift[ch] on [N, C, hw] data (count = N C hw elements), ch = (i / hw) % c,
// or relu(y) with `relu` non-zero. The eval-mode forward, and with a null (zero) shift and no ReLU
// the eval-mode input gradient.
extern "C" __global__ void batchnorm_scale_shift_fwd_f32(const float* __restrict__ x, const float* __restrict__ scale, const float* __restrict__ shift_or_null, float* __restrict__ y, int count, int c, int hw, int relu) {
    for (size_t i = global_thread_index(); i < size_t(count); i += global_thread_count()) {
        const unsigned ch = unsigned(i) / unsigned(hw) % unsigned(c);
        const float b = shift_or_null ? shift_or_null[ch] : 0.0f;
        y[i] = activate(__fadd_rn(__fmul_rn(x[i], scale[ch]), b), relu);
    }
}

// ---- Backward ---------------------------------------------------------------------------------

// Pass 1 of the gradient sums. Grid (P, C'), 1-D blocks of a multiple of 32 threads; block (b, ch)
// writes the doubles sum(dy), sum(dy * xhat) at 2 (ch P + b) of the workspace, with
// xhat = (x - mean[ch]) * inv_std[ch] rounded to float as the CPU rounds it, and dy masked by the
// ReLU's output where one is given (output_grad).
extern "C" __global__ void batchnorm_grad_partial_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ relu_out_or_null, const float* __restrict__ mean, const float* __restrict__ inv_std, unsigned* __restrict__ partials, int n, int c, int hw) {
    __shared__ double scratch[WARP_SIZE];
    const size_t m = size_t(n) * hw;
    for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
        const float mu = mean[ch];
        const float s = inv_std[ch];
        double sum_dy = 0.0;
        double sum_dy_xhat = 0.0;
        for (size_t j = global_thread_index(); j < m; j += global_thread_count()) {
            const size_t at = channel_element(unsigned(j), c, hw, ch);
            const float xhat = __fmul_rn(__fsub_rn(x[at], mu), s);
            const double g = double(output_grad(dy, relu_out_or_null, at));
            sum_dy += g;
            sum_dy_xhat += g * double(xhat);  // exact product: fused or not, one rounding
        }
        store_block_pair(partials, size_t(ch) * gridDim.x + blockIdx.x, sum_dy, sum_dy_xhat, scratch);
    }
}

// Pass 2 of the gradient sums alone (eval mode, or when only dgamma and dbeta are wanted).
// Grid-stride over channels, 1-D blocks of a multiple of 32 threads. Writes dbeta = sum(dy) and
// dgamma = sum(dy * xhat).
extern "C" __global__ void batchnorm_grad_final_bwd_f32(const unsigned* __restrict__ partials, float* __restrict__ sum_dy, float* __restrict__ sum_dy_xhat, int p, int c) {
    __shared__ double scratch[WARP_SIZE];
    __shared__ double totals[2];
    for (int ch = blockIdx.x; ch < c; ch += gridDim.x) {
        double s1;
        double s2;
        channel_totals(partials, p, ch, scratch, totals, s1, s2);
        if (threadIdx.x == 0) {
            sum_dy[ch] = float(s1);
            sum_dy_xhat[ch] = float(s2);
        }
    }
}

// Pass 2 of the training backward: the input gradient, and the gradient sums where wanted. Grid
// (P, C') and blocks as pass 1. Every block adds channel ch's p partials (the same tree in each)
// and writes dx = k[ch] * (dy - mean_dy - xhat * mean_dy_xhat) over its grid-stride share of the
// channel, with xhat = (x - mean[ch]) * inv_std[ch] and the means float(sum / M), in the CPU's
// order, dy masked by the ReLU's output where one is given (as in pass 1). Block 0 of the channel
// also writes dbeta = sum(dy) and dgamma = sum(dy * xhat) where given.
extern "C" __global__ void batchnorm_normalize_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ relu_out_or_null, const unsigned* __restrict__ partials, const float* __restrict__ mean, const float* __restrict__ inv_std, const float* __restrict__ k, float* __restrict__ dx, float* __restrict__ sum_dy_or_null, float* __restrict__ sum_dy_xhat_or_null, int p, int n, int c, int hw) {
    __shared__ double scratch[WARP_SIZE];
    __shared__ double totals[2];
    const double m = double(n) * double(hw);
    for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
        double s1;
        double s2;
        channel_totals(partials, p, ch, scratch, totals, s1, s2);
        if (blockIdx.x == 0 && threadIdx.x == 0) {
            if (sum_dy_or_null) sum_dy_or_null[ch] = float(s1);
            if (sum_dy_xhat_or_null) sum_dy_xhat_or_null[ch] = float(s2);
        }
        const float mean_dy = float(s1 / m);
        const float mean_dy_xhat = float(s2 / m);
        const float mu = mean[ch];
        const float s = inv_std[ch];
        const float kc = k[ch];
        for (size_t j = global_thread_index(); j < size_t(m); j += global_thread_count()) {
            const size_t at = channel_element(unsigned(j), c, hw, ch);
            const float xhat_term = __fmul_rn(__fmul_rn(__fsub_rn(x[at], mu), s), mean_dy_xhat);
            const float g = output_grad(dy, relu_out_or_null, at);
            dx[at] = __fmul_rn(kc, __fsub_rn(__fsub_rn(g, mean_dy), xhat_term));
        }
    }
}

// ---- The mixed op over batch-normalised candidates --------------------------------------------
// A DARTS search edge ends each candidate but the identity with a batch norm without affine
// parameters, and sums the candidates' outputs with the mixing weights w: out = sum_s w_s t_s,
// where t_s = xhat_s, the normalised x_s, or t_s = x_s (a plain candidate).
//
// Forward. Op by op that is the statistics pass and a normalisation launch per batch norm, each
// writing its t_s, then a launch that reads them all back for the sum: with the statistics of all
// the batch norms from one launch (batchnorm_moments_partial_fwd_f32), still seven for an edge,
// and six tensors the size of the output written, read and kept. Here the statistics pass is
// followed by one launch that normalises and sums at once: no t_s is ever written. What the
// backward needs of the forward is each normalised slot's mean and 1/sigma per channel, kept in a
// [K, 2, C] stats buffer (common.cuh), from which the backward kernels recompute t_s with the
// forward's own float operations (normalized_term).
//
// Backward. With dy the gradient at out, the gradient at t_s is g_s = w_s dy, and the input
// gradients are (module comment above, with gamma = 1)
//     dx_s = inv_std_s[ch] * (g_s - mean(g_s) - xhat_s * mean(g_s * xhat_s))    (normalised)
//     dx_s = g_s                                                                (plain)
// Op by op that is one scale launch for all s, then two launches per batch norm: up to thirteen
// for an edge. Here it is the batch-norm backward's two passes, each over all candidates at once
// (grid z is the candidate). The arithmetic is the CPU's (device::cpu::batchnorm::
// mixed_normalized_backward, on the recomputed terms), operation by operation.
//
// Eval mode. The statistics are the running ones (the validation passes of a search): the forward
// is one launch, which reads them where the statistics pass would have left its partials, and the
// input gradient, dx_s = inv_std_s[ch] * g_s, one launch too; op by op that is two launches per
// batch norm and one for the sum.

// Slot of the z-th set bit of `mask` (z < popcount(mask)).
__device__ __forceinline__ int nth_set_bit(unsigned mask, unsigned z) {
    for (int s = 0; s < MAX_SLOTS; ++s) {
        if ((mask >> s) & 1u) {
            if (z == 0) return s;
            --z;
        }
    }
    return MAX_SLOTS - 1;
}

// Where slot s's pass-1 partials start in a workspace holding those of the normalised slots (the
// set bits of norm_mask) in slot order, 4 C P words each.
__device__ __forceinline__ size_t mixed_partials_at(unsigned norm_mask, int s, int c, int p) {
    return 4 * size_t(__popc(norm_mask & ((1u << s) - 1u))) * c * p;
}

// Forward. In training, after pass 1 of the statistics over the normalised slots (in slot
// order), grid (P, C') and blocks as that pass: block (b, ch) computes channel ch's statistics of
// every normalised slot s < k (channel_statistics, so every block agrees to the bit). In eval mode
// (no partials, any grid of 1-D blocks) they are the running statistics, which every normalised
// slot must then give. Then the block writes y = sum_s w[w_offset + s] * t_s over its grid-stride
// share of the channel, t_s = normalized_term of x_s or x_s itself, multiplied and added in s order
// as mixed_sum_fwd_f32 does: the bits of each batch norm's output summed by the mixed op. Block 0
// of the channel also writes the stats (zeros in a plain slot's rows) and, in training, for a slot
// whose four running pointers are given, the running update. 1 <= k <= 8; in training M >= 2
// when any slot is normalised.
extern "C" __global__ void batchnorm_mixed_sum_fwd_f32(const float* __restrict__ x0, const float* __restrict__ x1, const float* __restrict__ x2, const float* __restrict__ x3, const float* __restrict__ x4, const float* __restrict__ x5, const float* __restrict__ x6, const float* __restrict__ x7, const float* __restrict__ w, int w_offset, unsigned norm_mask, int k, const unsigned* __restrict__ partials_or_null, const float* __restrict__ running_mean0_or_null, const float* __restrict__ running_mean1_or_null, const float* __restrict__ running_mean2_or_null, const float* __restrict__ running_mean3_or_null, const float* __restrict__ running_mean4_or_null, const float* __restrict__ running_mean5_or_null, const float* __restrict__ running_mean6_or_null, const float* __restrict__ running_mean7_or_null, const float* __restrict__ running_var0_or_null, const float* __restrict__ running_var1_or_null, const float* __restrict__ running_var2_or_null, const float* __restrict__ running_var3_or_null, const float* __restrict__ running_var4_or_null, const float* __restrict__ running_var5_or_null, const float* __restrict__ running_var6_or_null, const float* __restrict__ running_var7_or_null, float* __restrict__ stats, float* __restrict__ y, float* __restrict__ new_mean0_or_null, float* __restrict__ new_mean1_or_null, float* __restrict__ new_mean2_or_null, float* __restrict__ new_mean3_or_null, float* __restrict__ new_mean4_or_null, float* __restrict__ new_mean5_or_null, float* __restrict__ new_mean6_or_null, float* __restrict__ new_mean7_or_null, float* __restrict__ new_var0_or_null, float* __restrict__ new_var1_or_null, float* __restrict__ new_var2_or_null, float* __restrict__ new_var3_or_null, float* __restrict__ new_var4_or_null, float* __restrict__ new_var5_or_null, float* __restrict__ new_var6_or_null, float* __restrict__ new_var7_or_null, int p, int n, int c, int hw, float eps, float momentum) {
    __shared__ double scratch[WARP_SIZE];
    __shared__ double totals[2];
    const double m = double(n) * double(hw);
    float weight[MAX_SLOTS];
    for (int s = 0; s < MAX_SLOTS; ++s) weight[s] = s < k ? w[w_offset + s] : 0.0f;
    for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
        float mean[MAX_SLOTS];
        float inv_std[MAX_SLOTS];
        // Unrolled, so that mean[s] and inv_std[s] stay in registers.
        UNROLL for (int s = 0; s < MAX_SLOTS; ++s) {
            mean[s] = 0.0f;
            inv_std[s] = 0.0f;
            if (s >= k || !((norm_mask >> s) & 1u)) continue;  // the same for the whole block
            const float* running_mean = slot_of(s, running_mean0_or_null, running_mean1_or_null, running_mean2_or_null, running_mean3_or_null, running_mean4_or_null, running_mean5_or_null, running_mean6_or_null, running_mean7_or_null);
            const float* running_var = slot_of(s, running_var0_or_null, running_var1_or_null, running_var2_or_null, running_var3_or_null, running_var4_or_null, running_var5_or_null, running_var6_or_null, running_var7_or_null);
            if (!partials_or_null) {
                // Eval mode: the running statistics, as batchnorm_coefficients_fwd_f32 reads them.
                mean[s] = running_mean[ch];
                inv_std[s] = float(1.0 / sqrt(double(running_var[ch]) + double(eps)));
                continue;
            }
            const float* x = slot_of(s, x0, x1, x2, x3, x4, x5, x6, x7);
            const ChannelStats st = channel_statistics(partials_or_null + mixed_partials_at(norm_mask, s, c, p), p, ch, double(x[size_t(ch) * hw]), m, eps, scratch, totals);
            mean[s] = st.mean;
            inv_std[s] = st.inv_std;
            float* new_mean = slot_of(s, new_mean0_or_null, new_mean1_or_null, new_mean2_or_null, new_mean3_or_null, new_mean4_or_null, new_mean5_or_null, new_mean6_or_null, new_mean7_or_null);
            float* new_var = slot_of(s, new_var0_or_null, new_var1_or_null, new_var2_or_null, new_var3_or_null, new_var4_or_null, new_var5_or_null, new_var6_or_null, new_var7_or_null);
            if (blockIdx.x == 0 && threadIdx.x == 0 && running_mean && running_var && new_mean && new_var) {
                update_running(ch, st, m, momentum, running_mean, running_var, new_mean, new_var);
            }
        }
        if (blockIdx.x == 0 && threadIdx.x == 0) {
            for (int s = 0; s < MAX_SLOTS; ++s) {
                if (s >= k) continue;
                stats[2 * size_t(s) * c + ch] = mean[s];
                stats[(2 * size_t(s) + 1) * c + ch] = inv_std[s];
            }
        }
        for (size_t j = global_thread_index(); j < size_t(m); j += global_thread_count()) {
            const size_t at = channel_element(unsigned(j), c, hw, ch);
            float acc = 0.0f;
            for (int s = 0; s < MAX_SLOTS; ++s) {
                if (s >= k) continue;
                const float v = slot_of(s, x0, x1, x2, x3, x4, x5, x6, x7)[at];
                const float t = ((norm_mask >> s) & 1u) ? normalized_term(v, mean[s], inv_std[s]) : v;
                acc = s == 0 ? __fmul_rn(t, weight[0]) : __fadd_rn(acc, __fmul_rn(weight[s], t));
            }
            y[at] = acc;
        }
    }
}

// Backward pass 1. Grid (P, C', B) for the B normalised slots (the set bits of norm_mask, in slot
// order), blocks as batchnorm_grad_partial_bwd_f32's: block (b, ch, z) sums g = w[w_offset + s] * dy
// and g * t_s over its grid-stride share of channel ch of the z-th of them, s, in double, t_s
// recomputed from x_s and the stats, and writes the pair at 2 ((z C + ch) P + b) of the workspace.
// Slots hold N C hw elements.
extern "C" __global__ void batchnorm_mixed_partial_bwd_f32(const float* __restrict__ dy, const float* __restrict__ w, int w_offset, const float* __restrict__ x0, const float* __restrict__ x1, const float* __restrict__ x2, const float* __restrict__ x3, const float* __restrict__ x4, const float* __restrict__ x5, const float* __restrict__ x6, const float* __restrict__ x7, const float* __restrict__ stats, unsigned norm_mask, unsigned* __restrict__ partials, int n, int c, int hw) {
    __shared__ double scratch[WARP_SIZE];
    const int s = nth_set_bit(norm_mask, blockIdx.z);
    const float* x = slot_of(s, x0, x1, x2, x3, x4, x5, x6, x7);
    const float weight = w[w_offset + s];
    const size_t m = size_t(n) * hw;
    for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
        const float mu = stats_mean(stats, s, c, ch);
        const float k = stats_inv_std(stats, s, c, ch);
        double sum_g = 0.0;
        double sum_gt = 0.0;
        for (size_t j = global_thread_index(); j < m; j += global_thread_count()) {
            const size_t at = channel_element(unsigned(j), c, hw, ch);
            const double g = double(__fmul_rn(weight, dy[at]));
            sum_g += g;
            sum_gt += g * double(normalized_term(x[at], mu, k));  // exact product: one rounding
        }
        store_block_pair(partials, (size_t(blockIdx.z) * c + ch) * gridDim.x + blockIdx.x, sum_g, sum_gt, scratch);
    }
}

// Backward pass 2. Grid (P, C', K) over all K slots, blocks as pass 1: block (b, ch, s) writes dx_s
// over its share of channel ch, or nothing where dx_s is null (the whole block returns). In
// training a normalised slot first adds its channel's p partials (channel_totals: the same tree
// in every block) into mean(g) = float(sum / M) and mean(g t) likewise, then writes
// dx = inv_std[ch] * ((g - mean(g)) - t * mean(g t)), t recomputed as in pass 1. In eval mode (no
// partials, and no pass 1) the statistics are constants and it writes dx = inv_std[ch] * g. A
// plain slot writes dx = g.
extern "C" __global__ void batchnorm_mixed_input_bwd_f32(const float* __restrict__ dy, const float* __restrict__ w, int w_offset, const float* __restrict__ x0, const float* __restrict__ x1, const float* __restrict__ x2, const float* __restrict__ x3, const float* __restrict__ x4, const float* __restrict__ x5, const float* __restrict__ x6, const float* __restrict__ x7, const float* __restrict__ stats, const unsigned* __restrict__ partials_or_null, float* __restrict__ dx0_or_null, float* __restrict__ dx1_or_null, float* __restrict__ dx2_or_null, float* __restrict__ dx3_or_null, float* __restrict__ dx4_or_null, float* __restrict__ dx5_or_null, float* __restrict__ dx6_or_null, float* __restrict__ dx7_or_null, unsigned norm_mask, int p, int n, int c, int hw) {
    __shared__ double scratch[WARP_SIZE];
    __shared__ double totals[2];
    const int s = int(blockIdx.z);
    float* dx = slot_of(s, dx0_or_null, dx1_or_null, dx2_or_null, dx3_or_null, dx4_or_null, dx5_or_null, dx6_or_null, dx7_or_null);
    if (!dx) return;
    const float* x = slot_of(s, x0, x1, x2, x3, x4, x5, x6, x7);
    const bool normalised = (norm_mask >> s) & 1u;
    const bool train = partials_or_null != nullptr;
    const unsigned* mine = train ? partials_or_null + mixed_partials_at(norm_mask, s, c, p) : nullptr;
    const float weight = w[w_offset + s];
    const double m = double(n) * double(hw);
    for (int ch = blockIdx.y; ch < c; ch += gridDim.y) {
        float mean_g = 0.0f;
        float mean_gt = 0.0f;
        float mu = 0.0f;
        float k = 0.0f;
        if (normalised) {
            mu = stats_mean(stats, s, c, ch);
            k = stats_inv_std(stats, s, c, ch);
        }
        if (normalised && train) {
            double s1;
            double s2;
            channel_totals(mine, p, ch, scratch, totals, s1, s2);
            mean_g = float(s1 / m);
            mean_gt = float(s2 / m);
        }
        for (size_t j = global_thread_index(); j < size_t(m); j += global_thread_count()) {
            const size_t at = channel_element(unsigned(j), c, hw, ch);
            const float g = __fmul_rn(weight, dy[at]);
            float d = g;
            if (normalised && train) {
                d = __fmul_rn(k, __fsub_rn(__fsub_rn(g, mean_g), __fmul_rn(normalized_term(x[at], mu, k), mean_gt)));
            } else if (normalised) {
                d = __fmul_rn(k, g);
            }
            dx[at] = d;
        }
    }
}
