// mixed.cu: the DARTS mixed op over separate candidate buffers, forward and the mixing weights'
// gradient. The CPU reference is device::cpu::elementwise::weighted_sum and device::cpu::dot_f64;
// tests/kernels_mixed.rs compares every kernel here with it.
//
// Why a second mixed op
// ---------------------
// A DARTS edge computes y = sum_k w_k x_k over the outputs x_k of its K candidate operations (K <= 8,
// the eight primitives of the search space). elementwise.cu has this op for candidates stacked in
// one [K, n] buffer; but each candidate op writes its own tensor, and stacking them first is a copy
// of K n floats, as much memory traffic as the mixed op itself. These kernels take the K candidate
// pointers directly, as eight `const float*` parameters x0..x7 and a count k: a kernel's
// parameters live in constant memory, so there is no pointer table to build or copy to the device.
// Unused pointers alias x0 and are never read.
//
// Forward: y = sum_k w[k] * x_k[i]
// --------------------------------
// One thread per element in a grid-stride loop, adding in k order with __fmul_rn / __fadd_rn (which
// nvcc never contracts into a fused multiply-add), exactly as the CPU does, so the result equals
// the CPU's bit for bit. nvcc unrolls the loops over the 8 slots (their trip count is a constant;
// tools/kernel-report.sh shows no stack frame), so `slot_of(j, ...)` is resolved at compile time
// and the weights sit in registers; slots j >= k are skipped by a branch that is the same for every
// thread. Memory-bound: K + 1 floats moved per element, the least possible.
//
// The weights are k consecutive values from w_offset of their buffer: a DARTS edge reads its row
// of the architecture weights where it lies, with no copy of the row first.
//
// With no weights (a null pointer) every weight is 1 and y = x_0 + x_1 + ... in that order: the
// autograd tape adds up a variable's gradient contributions this way, up to eight in a launch,
// with the bits of adding them two at a time (x * 1 is x exactly).
//
// Backward: dw[k] = sum_i dy[i] * x_k[i]
// --------------------------------------
// K dot products of length n, reduced deterministically in two passes (the scheme of
// elementwise.cu, which has the full story): pass 1 here, on a (P, K) grid, has block (b, k) sum
// its grid-stride share of dy * x_k in double and write the block's sum as hi + lo floats; pass 2
// is elementwise_weighted_sum_weight_final_bwd_f32, which adds each weight's P partials. The
// partials have the same layout and, for the same P, the same values as the stacked version's, so
// both versions of the op give the same bits. The same pass serves the mixed op over
// batch-normalised candidates (batchnorm.cu), which never writes its terms: it recomputes each
// normalised term from the candidate's input and the forward's statistics.
//
// Backward: dx_k = w[k] * dy
// --------------------------
// Each candidate's input gradient is dy scaled by its weight. One launch writes all of them (up to
// eight outputs o0..o7, as the forward reads eight inputs), reading dy once, instead of one launch
// per candidate: a search step has hundreds of mixed ops. `picks` says which weight each output
// takes (3 bits per output), so candidates that need no gradient get no buffer. One rounded
// product per element, the CPU's bits.
#include "common.cuh"

// y[i] = sum_{j < k} w[w_offset + j] * x_j[i], added in j order as the CPU does, every weight 1
// where w is null. 1 <= k <= 8.
extern "C" __global__ void mixed_sum_fwd_f32(const float* __restrict__ x0, const float* __restrict__ x1, const float* __restrict__ x2, const float* __restrict__ x3, const float* __restrict__ x4, const float* __restrict__ x5, const float* __restrict__ x6, const float* __restrict__ x7, const float* __restrict__ w_or_null, int w_offset, float* __restrict__ y, int k, int n) {
    float weight[MAX_SLOTS];
    for (int j = 0; j < MAX_SLOTS; ++j) {
        weight[j] = j >= k ? 0.0f : w_or_null ? w_or_null[w_offset + j] : 1.0f;
    }
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        float acc = __fmul_rn(x0[i], weight[0]);
        for (int j = 1; j < MAX_SLOTS; ++j) {
            if (j < k) {
                acc = __fadd_rn(acc, __fmul_rn(weight[j], slot_of(j, x0, x1, x2, x3, x4, x5, x6, x7)[i]));
            }
        }
        y[i] = acc;
    }
}

// Pass 1 of dw[k] = sum_i dy[i] * t_k[i], t_k = x_k, or, for a slot whose bit is set in norm_mask,
// the batch-normalised x_k recomputed from the stats of a [K, 2, C] buffer (common.cuh; the mixed
// op over batch-normalised candidates of batchnorm.cu), element i lying in channel (i / hw) % c.
// Grid (P, K), 1-D blocks of a multiple of 32 threads. Block (b, k) writes partials[2 (k P + b)] =
// hi and partials[2 (k P + b) + 1] = lo, the layout elementwise_weighted_sum_weight_final_bwd_f32
// (pass 2) reads. stats may be null when norm_mask is 0.
extern "C" __global__ void mixed_sum_weight_partial_bwd_f32(const float* __restrict__ dy, const float* __restrict__ x0, const float* __restrict__ x1, const float* __restrict__ x2, const float* __restrict__ x3, const float* __restrict__ x4, const float* __restrict__ x5, const float* __restrict__ x6, const float* __restrict__ x7, const float* __restrict__ stats_or_null, unsigned norm_mask, int c, int hw, float* __restrict__ partials, int n) {
    __shared__ double scratch[WARP_SIZE];
    const int slot = int(blockIdx.y);
    const float* x = slot_of(slot, x0, x1, x2, x3, x4, x5, x6, x7);
    const bool normalised = stats_or_null && ((norm_mask >> slot) & 1u);
    double s = 0.0;
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        float t = x[i];
        if (normalised) {
            const int ch = int(i / unsigned(hw) % unsigned(c));
            t = normalized_term(t, stats_mean(stats_or_null, slot, c, ch), stats_inv_std(stats_or_null, slot, c, ch));
        }
        s += double(dy[i]) * double(t);  // the product of two floats is exact in double
    }
    s = block_reduce_sum(s, scratch);
    if (threadIdx.x == 0) {
        const float hi = float(s);
        const size_t at = 2 * (size_t(blockIdx.y) * gridDim.x + blockIdx.x);
        partials[at] = hi;
        partials[at + 1] = float(s - double(hi));
    }
}

// o_s[i] = w[w_offset + ((picks >> 3s) & 7)] * dy[i] for s < outputs (1 <= outputs <= 8); the
// other outputs are never touched.
extern "C" __global__ void mixed_scale_bwd_f32(const float* __restrict__ dy, const float* __restrict__ w, int w_offset, float* __restrict__ o0, float* __restrict__ o1, float* __restrict__ o2, float* __restrict__ o3, float* __restrict__ o4, float* __restrict__ o5, float* __restrict__ o6, float* __restrict__ o7, unsigned picks, int outputs, int n) {
    float weight[MAX_SLOTS];
    for (int s = 0; s < MAX_SLOTS; ++s) {
        weight[s] = s < outputs ? w[w_offset + int((picks >> (3 * s)) & 7u)] : 0.0f;
    }
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        const float d = dy[i];
        for (int s = 0; s < MAX_SLOTS; ++s) {
            if (s < outputs) slot_of(s, o0, o1, o2, o3, o4, o5, o6, o7)[i] = __fmul_rn(weight[s], d);
        }
    }
}
