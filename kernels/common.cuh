// common.cuh: device helpers shared by every kernel family.
//
// Conventions for kernels/*.cu (build.rs enforces the first two):
// - A kernel is declared on one line, `extern "C" __global__ void <family>_<op>_<dir>_<dtype>(...)`,
//   with parameters of these types only: const float*, float*, const int*, int*,
//   const unsigned*, unsigned*, int, unsigned, float, unsigned long long, and the parameter
//   structs below (by value). build.rs reads that line and generates the typed Rust launcher, so
//   the Rust side can never pass arguments in another order or of another type.
// - Every kernel is correct for any grid: loops are grid-stride loops, so the Rust side picks the
//   grid for speed alone.
// - Reductions are deterministic: fixed-shape trees, a second pass instead of float atomics, so
//   that two runs give the same bits.
// - `__shared__` arrays are declared in kernels, never in helpers (the host emulator needs that;
//   see kernels/emu/cuda_emu.h). Helpers that need scratch space take a pointer to it.
#pragma once

#ifndef DARTS_EMU
// nvcc side of the dynamic shared memory macro (the emulator defines its own). All dynamic shared
// memory of a block is one array; each kernel views it with the type it needs.
#define DARTS_DYNAMIC_SHARED(T, name)                                  \
    extern __shared__ __align__(16) unsigned char darts_dynamic_smem[]; \
    T* name = reinterpret_cast<T*>(darts_dynamic_smem)
#endif

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

// `#pragma unroll` for nvcc; the emulator's host compiler does not know it.
#ifdef DARTS_EMU
#define UNROLL
#else
#define UNROLL _Pragma("unroll")
#endif

// ---- Parameter structs ------------------------------------------------------------------------
// Plain structs of ints that kernels take by value. Each has a #[repr(C)] Rust twin of the same
// layout (named in build.rs), which the generated launchers take.

// One spatial axis of a convolution: output position o and kernel tap t read input position
// o·stride + t·dil − pad, or nothing where that falls outside [0, size). The Rust twin is
// darts::device::gpu::conv::ConvAxis.
struct ConvAxis {
    int size;    // input positions
    int out;     // output positions
    int kernel;  // taps
    int stride;
    int pad;
    int dil;
};

// The window of a 2-D convolution: its height axis, then its width axis (ConvWindow in Rust).
struct ConvWindow {
    ConvAxis y;
    ConvAxis x;
};

// ---- Grid-stride loops ------------------------------------------------------------------------
// for (size_t i = global_thread_index(); i < n; i += global_thread_count()) { ... }
// Indices are 64-bit, so `i += stride` cannot overflow near the end of a large buffer.
__device__ __forceinline__ size_t global_thread_index() {
    return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ size_t global_thread_count() {
    return static_cast<size_t>(blockDim.x) * gridDim.x;
}

// ---- Multi-tensor launches --------------------------------------------------------------------
// One launch over many buffers (every parameter of a network) instead of one launch each. The
// table (src/device/gpu/multi.rs builds it) holds MULTI_SLOTS 64-bit words per tensor: the
// addresses of up to MULTI_SLOTS - 1 buffers (0 for a slot not in use) and the tensor's length;
// then one word per block, (tensor << 32) | chunk. Block b handles elements
// [chunk * chunk_len, min((chunk + 1) * chunk_len, n)) of its tensor, in every slot at once:
//     const MultiChunk c = multi_chunk(table, tensors, chunk_len);
//     for (size_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x) { ... }
// The chunks depend only on the lengths, so a reduction over them adds in a fixed order.
#define MULTI_SLOTS 4

struct MultiChunk {
    const unsigned long long* slots;
    size_t begin;
    size_t end;
};

__device__ __forceinline__ MultiChunk multi_chunk(const unsigned long long* table, int tensors, int chunk_len) {
    const unsigned long long entry = table[size_t(MULTI_SLOTS) * size_t(tensors) + blockIdx.x];
    const unsigned long long* slots = table + size_t(MULTI_SLOTS) * size_t(entry >> 32);
    const size_t n = size_t(slots[MULTI_SLOTS - 1]);
    const size_t begin = size_t(entry & 0xffffffffull) * size_t(chunk_len);
    return MultiChunk{slots, begin, begin + size_t(chunk_len) < n ? begin + size_t(chunk_len) : n};
}

// Buffer `slot` of the chunk's tensor, as a T* (null where the slot is not in use).
template <class T>
__device__ __forceinline__ T* multi_buffer(const MultiChunk& c, int slot) {
    return reinterpret_cast<T*>(c.slots[slot]);
}

// ---- Eight buffer slots -----------------------------------------------------------------------
// The mixed-op kernels take up to eight candidate buffers as eight pointer parameters p0..p7 (a
// kernel's parameters live in constant memory: no pointer table to build or copy to the device).
// Slot j of them: free when j is known at compile time (an unrolled loop), a few selects when it
// is uniform over a block (blockIdx.y or .z).
#define MAX_SLOTS 8

template <class T>
__device__ __forceinline__ T* slot_of(int j, T* p0, T* p1, T* p2, T* p3, T* p4, T* p5, T* p6, T* p7) {
    switch (j) {
        case 0: return p0;
        case 1: return p1;
        case 2: return p2;
        case 3: return p3;
        case 4: return p4;
        case 5: return p5;
        case 6: return p6;
        default: return p7;
    }
}

// ---- Four problem slots -----------------------------------------------------------------------
// The convolution kernels and the GEMM under them compute up to GROUP_SLOTS problems of one shape
// per launch (a DARTS search edge's convolutions, stage by stage), each with its own buffers,
// passed as four parameters of each kind: problem slot s reads the s-th. Past the last slot in
// use, the input parameters may alias any buffer and the outputs are null; no thread reads them.
#define GROUP_SLOTS 4

// Slot s of four values (s uniform over a block, so a few selects).
template <class T>
__device__ __forceinline__ T group_slot(int s, T v0, T v1, T v2, T v3) {
    return s == 0 ? v0 : s == 1 ? v1 : s == 2 ? v2 : v3;
}

// ---- Batch-normalised terms of a mixed op ------------------------------------------------------
// A DARTS search edge sums its candidates' batch norms (no affine parameters) without ever
// writing them out: its forward keeps, per candidate, the mean and 1/sigma of each channel in a
// `stats` buffer of [K, 2, C] floats (row 2s: the means of slot s, row 2s + 1: its 1/sigma; zeros
// for a slot summed as it is), and every kernel that needs a term recomputes it from the
// candidate's input with these float operations, the batch norm's own (batchnorm.cu's affine map
// with gamma = 1 and beta = 0): the same bits every time.
__device__ __forceinline__ float normalized_term(float x, float mean, float inv_std) {
    return __fadd_rn(__fmul_rn(x, inv_std), __fsub_rn(0.0f, __fmul_rn(mean, inv_std)));
}

// Slot s's mean of channel ch in a [K, 2, C] stats buffer.
__device__ __forceinline__ float stats_mean(const float* stats, int s, int c, int ch) {
    return stats[2 * size_t(s) * c + ch];
}

// Slot s's 1/sigma of channel ch in a [K, 2, C] stats buffer.
__device__ __forceinline__ float stats_inv_std(const float* stats, int s, int c, int ch) {
    return stats[(2 * size_t(s) + 1) * c + ch];
}

// ---- Reductions -------------------------------------------------------------------------------
// Sum over the 32 lanes of a warp with a fixed tree: lane i adds lane i+16, then i+8, ... so the
// order of additions never changes. The full sum lands in lane 0 (the other lanes hold partials).
template <class T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        v += __shfl_down_sync(FULL_MASK, v, offset);
    }
    return v;
}

// Sum over a whole block (blockDim.x a multiple of 32, at most 1024, 1-D): each warp reduces its
// lanes, lane 0 of every warp writes its sum to `scratch` (at least blockDim.x / 32 elements of
// __shared__ memory), then warp 0 reduces those sums. The shape of the tree depends only on
// blockDim.x, so the result is the same bits every run. The total is returned to thread 0 only.
// Ends with a barrier, so `scratch` may be reused right after.
template <class T>
__device__ __forceinline__ T block_reduce_sum(T v, T* scratch) {
    const unsigned warp = threadIdx.x / WARP_SIZE;
    const unsigned lane = threadIdx.x % WARP_SIZE;
    const unsigned warps = blockDim.x / WARP_SIZE;
    v = warp_reduce_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? scratch[lane] : T(0);
        v = warp_reduce_sum(v);
    }
    __syncthreads();
    return v;
}

// ---- Pointwise math ---------------------------------------------------------------------------
// max(x, 0), except that NaN stays NaN (as in PyTorch): fmaxf would turn it into 0 and hide a
// diverged network from the loss.
__device__ __forceinline__ float reluf(float x) {
    return x > 0.0f || x != x ? x : 0.0f;
}

// The logistic function, written as the CPU reference writes it, so that e^x never overflows:
// for x >= 0 it uses e^(-x) <= 1, for x < 0 it uses e^x < 1.
__device__ __forceinline__ float sigmoidf(float x) {
    if (x >= 0.0f) {
        return 1.0f / (1.0f + expf(-x));
    }
    float e = expf(x);
    return e / (1.0f + e);
}
