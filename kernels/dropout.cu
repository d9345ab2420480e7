// dropout.cu: inverted-dropout masks drawn from Philox4x32-10, and a mask applied to a tensor with
// the broadcast the dropout ops use. The CPU reference is src/device/cpu/dropout.rs (and the
// generator in src/rng.rs); tests/kernels_dropout.rs checks that every mask is bit-identical to
// the CPU's.
//
// Why a counter-based generator
// -----------------------------
// A sequential generator (xorshift, Mersenne twister) has a state that each draw advances, so the
// i-th number depends on every draw before it: a GPU would need a state per thread and would draw
// a different mask from the CPU. Philox (Salmon et al., "Parallel random numbers: as easy as 1, 2,
// 3", SC'11) is a keyed bijection on 128-bit counters instead: block b of the stream named by a
// 64-bit seed is philox(counter = (b_lo, b_hi, 0, 0), key = (seed_lo, seed_hi)), four 32-bit words,
// and element i of a mask is word i % 4 of block i / 4. Any thread can compute any element with no
// state at all, so the mask depends only on (seed, i): the same on the CPU, on the emulator and on
// every GPU, whatever the grid or the order the threads run in.
//
// One round multiplies two of the four words by fixed odd constants (a 32x32 -> 64-bit product,
// one mul.wide on the GPU), swaps the words around, and xors the high halves with the key; the
// key is bumped by two Weyl constants between rounds. The paper found seven rounds enough to pass
// TestU01's BigCrush; ten is the customary margin, and what the CPU uses.
//
// From bits to a kept/dropped decision
// ------------------------------------
// u = (word >> 8) * 2^-24 keeps the top 24 bits, which an f32 holds exactly, so u is an exact
// multiple of 2^-24 in [0, 1) with no rounding anywhere, as in the CPU's `uniform_at`. Element i is
// kept (multiplier 1 / (1 - p), so that E[y] = x) when u >= p, dropped (multiplier 0) otherwise.
// The multiplier is computed with __fsub_rn / __fdiv_rn, IEEE operations nvcc never replaces with
// approximations, so it has the CPU's bits too.
//
// Parallelisation
// ---------------
// One Philox call yields four words, so each thread of the grid-stride loop handles one block of
// four consecutive elements: ten rounds of integer arithmetic (twenty 32x32 -> 64-bit multiplies)
// per four stores instead of per one, which keeps the arithmetic well below the cost of writing
// the mask to memory.
//
// Applying a mask is y[i] = x[i] * mask[(i / inner) % m]: x seen as [outer, m, inner] with the mask
// broadcast over the outer and inner dimensions (plain dropout: inner = 1 and m = n; variational
// dropout of [T, B, F] sequences: a [B, F] mask shared by all T steps; drop path: one multiplier
// per sample, inner = elements per sample). The backward pass of every dropout op is the same
// kernel applied to the output gradient, so there is no separate backward kernel.
#include "common.cuh"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

// Four 32-bit words: a Philox counter, or the random words it maps to.
struct PhiloxWords {
    unsigned x, y, z, w;
};

// Ten rounds of Philox4x32 on counter c under key (k0, k1), as `philox4x32` in src/rng.rs.
__device__ __forceinline__ PhiloxWords philox4x32_10(PhiloxWords c, unsigned k0, unsigned k1) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        const unsigned long long p0 = static_cast<unsigned long long>(PHILOX_M0) * c.x;
        const unsigned long long p1 = static_cast<unsigned long long>(PHILOX_M1) * c.z;
        c = PhiloxWords{unsigned(p1 >> 32) ^ c.y ^ k0, unsigned(p1), unsigned(p0 >> 32) ^ c.w ^ k1, unsigned(p0)};
    }
    return c;
}

// mask[i] = scale if u(bits) >= p, else 0, where u(bits) = (bits >> 8) * 2^-24 is `uniform_at`'s
// conversion (exact: 24 bits fit an f32, and the product is by a power of two). Skips i >= n.
__device__ __forceinline__ void keep_or_drop(float* __restrict__ mask, size_t i, size_t n, unsigned bits, float p, float scale) {
    if (i < n) {
        const float u = float(bits >> 8) * (1.0f / 16777216.0f);
        mask[i] = u >= p ? scale : 0.0f;
    }
}

// mask[i] = 1 / (1 - p) when uniform_at(seed, i) >= p, else 0, for i < n. Thread step b draws
// block b of the stream and writes elements 4b .. 4b + 3.
extern "C" __global__ void dropout_mask_fwd_f32(float* __restrict__ mask, int n, float p, unsigned long long seed) {
    const float scale = __fdiv_rn(1.0f, __fsub_rn(1.0f, p));
    const unsigned k0 = unsigned(seed);
    const unsigned k1 = unsigned(seed >> 32);
    const size_t blocks = (size_t(n) + 3) / 4;
    for (size_t b = global_thread_index(); b < blocks; b += global_thread_count()) {
        const PhiloxWords r = philox4x32_10(PhiloxWords{unsigned(b), unsigned(b >> 32), 0u, 0u}, k0, k1);
        keep_or_drop(mask, 4 * b, size_t(n), r.x, p, scale);
        keep_or_drop(mask, 4 * b + 1, size_t(n), r.y, p, scale);
        keep_or_drop(mask, 4 * b + 2, size_t(n), r.z, p, scale);
        keep_or_drop(mask, 4 * b + 3, size_t(n), r.w, p, scale);
    }
}

// y[i] = x[i] * mask[(i / inner) % m] for i < n (n fits an int, so 32-bit division suffices).
extern "C" __global__ void dropout_apply_mask_fwd_f32(const float* __restrict__ x, const float* __restrict__ mask, float* __restrict__ y, int n, int m, int inner) {
    for (size_t i = global_thread_index(); i < size_t(n); i += global_thread_count()) {
        y[i] = x[i] * mask[unsigned(i) / unsigned(inner) % unsigned(m)];
    }
}
