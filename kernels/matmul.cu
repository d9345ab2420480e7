// matmul.cu: the SIMT matrix product (GEMM) that the dense layers and the convolutions run on, and
// the embedding lookup with its gradient. The CPU reference is src/device/cpu/matmul.rs (gemm,
// gather_rows, scatter_add_rows); tests/kernels_matmul.rs compares every kernel here with it, and
// tests/kernels_conv.rs drives the GEMM through every batched layout the convolutions use.
//
// The GEMM: C = A·B (+ beta·C)
// -----------------------------
// A is m×k, B is k×n, C is m×n row-major. A and B are read through (row stride, column stride)
// pairs: element (i, l) of A sits at a[i·a_rs + l·a_cs]. A transpose is then just a swap of the
// two strides (row-major A: (k, 1); Aᵀ of a row-major k×m buffer: (1, m)), so A·B, Aᵀ·B, A·Bᵀ and
// Aᵀ·Bᵀ are one kernel and no transpose is ever copied.
//
// The naive kernel (one thread per C element, k loads of A and k of B from global memory) moves
// 2k floats for 2k flops: memory-bound at a few percent of the GPU's arithmetic. Tiling fixes the
// ratio. A block of 16×16 threads owns a 64×64 tile of C and walks k in steps of 16:
//
//   1. the block copies the 64×16 slab of A and the 16×64 slab of B it needs into shared memory
//      (1024 floats each, 4 per thread), zeros where the slab runs past m, n or k;
//   2. after a barrier, each thread reads, for each of the 16 values of l, 4 floats of the A slab
//      and 4 of the B slab into registers and does the 16 multiply-adds of their outer product
//      into its 4×4 accumulators;
//   3. a barrier, and the next slab.
//
// Each float brought into shared memory feeds 64 multiply-adds and each register load feeds 4:
// the inner loop does 16 multiply-adds per 8 shared-memory loads, where the naive kernel does one
// per 2 global loads. Thread (tx, ty)
// owns rows ty + 16r and columns tx + 16s (r, s < 4) of the tile, not a contiguous 4×4 square:
// then the 16 threads of a half-warp read 16 consecutive B values (no bank conflicts), share one A
// value (a broadcast), and write 16 consecutive floats of C (coalesced).
//
// Loads into shared memory follow whichever stride of the operand is 1, so that neighbouring
// threads read neighbouring addresses for every transpose combination; the A slab is stored
// k-major (As[l][i]) with 4 floats of padding per row, which keeps the transposing store at two
// threads per bank at most.
//
// Every C element is one thread's sum over l = 0, 1, ..., k-1 in order, so the result does not
// depend on the grid, the tiling of other elements, or the run: the same bits every time.
//
// Batches: the convolutions need many independent products at once (one per image and channel
// group), so the kernel runs `outer × inner` problems. Problem (o, g) reads A at a + a_off +
// o·a_so + g·a_si, B and C likewise. Up to four such batches of one shape, each with its own
// buffers (slots 0 .. slots-1: a_s, b_s, c_s, see GROUP_SLOTS in common.cuh), share a launch: the
// 1×1 convolutions of a DARTS search edge's candidates, stage by stage. The grid is (n tiles,
// m tiles, problems of all slots), each axis a grid-stride loop, so any grid gives the same
// result and the Rust side only picks it for speed.
//
// The TF32 tensor-core GEMM
// --------------------------
// matmul_gemm_tf32_fwd_f32 takes the same arguments and computes the same product on the tensor
// cores (sm_80 and newer), through CUDA's warp matrix API: a warp multiplies a 16×8 tile of A by
// an 8×16 tile of B into a 16×16 float accumulator in one instruction sequence. The block is 2×2
// warps over the same 64×64 tile of C; each warp owns a 32×32 quarter, that is 2×2 accumulators.
// The slabs of A and B are staged in shared memory as above (row-major here, which is what the
// wmma loads read), each value rounded to TF32 on the way: 10 mantissa bits instead of 23,
// rounded to nearest. The products of TF32 values are exact and the sums are float, so the result
// differs from the SIMT kernel's by about 2^-11 of the size of the terms: fine for training, not
// the CPU's bits. That is why the SIMT kernel stays the default and this one is chosen per
// executor (`GemmPrecision::Tf32`). Each element is still a fixed sequence of instructions over
// k, so two runs on one GPU give the same bits. At the end the accumulators go through shared
// memory, so that C is written row by row (coalesced) and beta and the edges of the matrix are
// handled as in the SIMT kernel. The emulator runs it too (kernels/emu/include/mma.h), which is
// how CI checks its indexing, its barriers and its rounding against the CPU.
//
// The embedding
// -------------
// Forward is a gather: out[r, :] = weight[ids[r], :]. Its gradient adds row r of dy into row
// ids[r] of the table. With float atomics that is one line, but repeated ids then add in whatever
// order the threads arrive: the bits change from run to run. Instead one block owns one table row
// v and finds, in order, every r with ids[r] == v (a block-wide prefix sum over a chunk of ids
// compacts the matches into shared memory), then each thread adds those dy rows for its features,
// in r order. Every table element is written by one thread, sums run in the order of the CPU
// reference (which loops over r), and so the results are bit-identical to it and to each other.
#include "common.cuh"

#include <mma.h>

#define GEMM_TILE 64                      // rows and columns of C per block
#define GEMM_SLAB 16                      // k per shared-memory slab
#define GEMM_THREADS_SIDE 16              // the block is 16×16 threads
#define GEMM_PER_THREAD 4                 // each thread owns 4×4 elements of the tile
#define GEMM_PAD 4                        // floats of padding per shared row
#define GEMM_THREADS (GEMM_THREADS_SIDE * GEMM_THREADS_SIDE)
#define GEMM_LOADS (GEMM_TILE * GEMM_SLAB / GEMM_THREADS)  // slab elements each thread copies

// Where problem p of a batch of outer × inner problems finds an operand: `off + (p / inner)·so +
// (p % inner)·si` elements into its buffer.
__device__ __forceinline__ size_t gemm_offset(int p, int inner, int off, int so, int si) {
    return size_t(off) + size_t(p / inner) * so + size_t(p % inner) * si;
}

// One element of a slab being copied to shared memory: its row and column in the slab, and its
// value (zero past the edge of the matrix).
struct SlabElement {
    int row;
    int col;
    float value;
};

// Element e of the A slab at rows row0.., columns l0.. (GEMM_TILE × GEMM_SLAB). Consecutive e walk
// along whichever stride of A is 1, so that neighbouring threads read neighbouring addresses.
__device__ __forceinline__ SlabElement gemm_a_slab(const float* ap, int e, int row0, int l0, int m, int k, int a_rs, int a_cs) {
    const bool along_k = a_cs == 1;
    const int i = along_k ? e / GEMM_SLAB : e % GEMM_TILE;
    const int l = along_k ? e % GEMM_SLAB : e / GEMM_TILE;
    const int gi = row0 + i;
    const int gl = l0 + l;
    return {i, l, (gi < m && gl < k) ? ap[gi * a_rs + gl * a_cs] : 0.0f};
}

// Element e of the B slab at rows l0.., columns col0.. (GEMM_SLAB × GEMM_TILE), likewise.
__device__ __forceinline__ SlabElement gemm_b_slab(const float* bp, int e, int col0, int l0, int n, int k, int b_rs, int b_cs) {
    const bool along_n = b_cs == 1;
    const int j = along_n ? e % GEMM_TILE : e / GEMM_SLAB;
    const int l = along_n ? e / GEMM_TILE : e % GEMM_SLAB;
    const int gj = col0 + j;
    const int gl = l0 + l;
    return {l, j, (gj < n && gl < k) ? bp[gl * b_rs + gj * b_cs] : 0.0f};
}

// c = v + beta·c (just v when beta is 0, so that C's old contents, even NaN, are never read).
__device__ __forceinline__ void gemm_store(float* c, float v, float beta) {
    *c = beta == 0.0f ? v : v + beta * *c;
}

// C_s = A_s·B_s + beta·C_s for a batch of outer × inner problems in each slot s < slots (beta = 0:
// C is only written, never read, so it may hold NaN). Block (16, 16, 1); any grid.
extern "C" __global__ void matmul_gemm_fwd_f32(const float* __restrict__ a0, const float* __restrict__ a1, const float* __restrict__ a2, const float* __restrict__ a3, const float* __restrict__ b0, const float* __restrict__ b1, const float* __restrict__ b2, const float* __restrict__ b3, float* __restrict__ c0_or_null, float* __restrict__ c1_or_null, float* __restrict__ c2_or_null, float* __restrict__ c3_or_null, int slots, int m, int n, int k, int a_rs, int a_cs, int b_rs, int b_cs, float beta, int outer, int inner, int a_off, int a_so, int a_si, int b_off, int b_so, int b_si, int c_off, int c_so, int c_si) {
    __shared__ float as[GEMM_SLAB][GEMM_TILE + GEMM_PAD];
    __shared__ float bs[GEMM_SLAB][GEMM_TILE + GEMM_PAD];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int tid = ty * GEMM_THREADS_SIDE + tx;
    const int tiles_m = (m + GEMM_TILE - 1) / GEMM_TILE;
    const int tiles_n = (n + GEMM_TILE - 1) / GEMM_TILE;
    const int per_slot = outer * inner;
    const int problems = slots * per_slot;

    for (int p = blockIdx.z; p < problems; p += gridDim.z) {
        const int s = p / per_slot;
        const float* ap = group_slot(s, a0, a1, a2, a3) + gemm_offset(p % per_slot, inner, a_off, a_so, a_si);
        const float* bp = group_slot(s, b0, b1, b2, b3) + gemm_offset(p % per_slot, inner, b_off, b_so, b_si);
        float* cp = group_slot(s, c0_or_null, c1_or_null, c2_or_null, c3_or_null) + gemm_offset(p % per_slot, inner, c_off, c_so, c_si);
        for (int tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
            for (int tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
                const int row0 = tm * GEMM_TILE;
                const int col0 = tn * GEMM_TILE;
                float acc[GEMM_PER_THREAD][GEMM_PER_THREAD];
                for (int r = 0; r < GEMM_PER_THREAD; ++r) {
                    for (int s = 0; s < GEMM_PER_THREAD; ++s) acc[r][s] = 0.0f;
                }
                for (int l0 = 0; l0 < k; l0 += GEMM_SLAB) {
                    // The slabs; A's stored k-major (as[l][i]).
                    UNROLL for (int q = 0; q < GEMM_LOADS; ++q) {
                        const SlabElement e = gemm_a_slab(ap, tid + q * GEMM_THREADS, row0, l0, m, k, a_rs, a_cs);
                        as[e.col][e.row] = e.value;
                    }
                    UNROLL for (int q = 0; q < GEMM_LOADS; ++q) {
                        const SlabElement e = gemm_b_slab(bp, tid + q * GEMM_THREADS, col0, l0, n, k, b_rs, b_cs);
                        bs[e.row][e.col] = e.value;
                    }
                    __syncthreads();
                    UNROLL for (int l = 0; l < GEMM_SLAB; ++l) {
                        float ra[GEMM_PER_THREAD];
                        float rb[GEMM_PER_THREAD];
                        for (int r = 0; r < GEMM_PER_THREAD; ++r) ra[r] = as[l][ty + GEMM_THREADS_SIDE * r];
                        for (int s = 0; s < GEMM_PER_THREAD; ++s) rb[s] = bs[l][tx + GEMM_THREADS_SIDE * s];
                        for (int r = 0; r < GEMM_PER_THREAD; ++r) {
                            for (int s = 0; s < GEMM_PER_THREAD; ++s) acc[r][s] += ra[r] * rb[s];
                        }
                    }
                    __syncthreads();
                }
                for (int r = 0; r < GEMM_PER_THREAD; ++r) {
                    const int gi = row0 + ty + GEMM_THREADS_SIDE * r;
                    if (gi >= m) continue;
                    for (int s = 0; s < GEMM_PER_THREAD; ++s) {
                        const int gj = col0 + tx + GEMM_THREADS_SIDE * s;
                        if (gj >= n) continue;
                        gemm_store(cp + size_t(gi) * n + gj, acc[r][s], beta);
                    }
                }
            }
        }
    }
}

#define TF32_WARPS_SIDE 2                 // the block is 2×2 warps
#define TF32_THREADS (TF32_WARPS_SIDE * TF32_WARPS_SIDE * WARP_SIZE)
#define TF32_WARP_TILE (GEMM_TILE / TF32_WARPS_SIDE)  // rows and columns of C per warp
#define TF32_FRAG 16                      // rows and columns of one wmma accumulator
#define TF32_FRAG_K 8                     // k of one wmma product
#define TF32_FRAGS (TF32_WARP_TILE / TF32_FRAG)       // accumulators per warp along each side
#define TF32_PAD 4                        // wmma wants rows a multiple of 16 bytes apart
#define TF32_LOADS (GEMM_TILE * GEMM_SLAB / TF32_THREADS)

// The TF32 tensor-core twin of matmul_gemm_fwd_f32 (same arguments, same result up to TF32
// rounding). Block (128, 1, 1): four whole warps; any grid.
extern "C" __global__ void __launch_bounds__(TF32_THREADS, 4) matmul_gemm_tf32_fwd_f32(const float* __restrict__ a0, const float* __restrict__ a1, const float* __restrict__ a2, const float* __restrict__ a3, const float* __restrict__ b0, const float* __restrict__ b1, const float* __restrict__ b2, const float* __restrict__ b3, float* __restrict__ c0_or_null, float* __restrict__ c1_or_null, float* __restrict__ c2_or_null, float* __restrict__ c3_or_null, int slots, int m, int n, int k, int a_rs, int a_cs, int b_rs, int b_cs, float beta, int outer, int inner, int a_off, int a_so, int a_si, int b_off, int b_so, int b_si, int c_off, int c_so, int c_si) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // no TF32 tensor cores before sm_80; the Rust side never picks this kernel there
#else
    using namespace nvcuda;
    using FragA = wmma::fragment<wmma::matrix_a, TF32_FRAG, TF32_FRAG, TF32_FRAG_K, wmma::precision::tf32, wmma::row_major>;
    using FragB = wmma::fragment<wmma::matrix_b, TF32_FRAG, TF32_FRAG, TF32_FRAG_K, wmma::precision::tf32, wmma::row_major>;
    using FragC = wmma::fragment<wmma::accumulator, TF32_FRAG, TF32_FRAG, TF32_FRAG_K, float>;
    // wmma loads and stores need 256-bit aligned tile corners: the arrays are, and every corner
    // used below sits a multiple of 32 bytes into them.
    __shared__ __align__(32) float as[GEMM_TILE][GEMM_SLAB + TF32_PAD];  // A slab, (i, l)
    __shared__ __align__(32) float bs[GEMM_SLAB][GEMM_TILE + TF32_PAD];  // B slab, (l, j)
    __shared__ __align__(32) float cs[GEMM_TILE][GEMM_TILE + TF32_PAD];  // the finished C tile
    const int tid = threadIdx.x;
    const int warp = tid / WARP_SIZE;
    const int warp_row = (warp / TF32_WARPS_SIDE) * TF32_WARP_TILE;
    const int warp_col = (warp % TF32_WARPS_SIDE) * TF32_WARP_TILE;
    const int tiles_m = (m + GEMM_TILE - 1) / GEMM_TILE;
    const int tiles_n = (n + GEMM_TILE - 1) / GEMM_TILE;
    const int per_slot = outer * inner;
    const int problems = slots * per_slot;

    for (int p = blockIdx.z; p < problems; p += gridDim.z) {
        const int s = p / per_slot;
        const float* ap = group_slot(s, a0, a1, a2, a3) + gemm_offset(p % per_slot, inner, a_off, a_so, a_si);
        const float* bp = group_slot(s, b0, b1, b2, b3) + gemm_offset(p % per_slot, inner, b_off, b_so, b_si);
        float* cp = group_slot(s, c0_or_null, c1_or_null, c2_or_null, c3_or_null) + gemm_offset(p % per_slot, inner, c_off, c_so, c_si);
        for (int tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
            for (int tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
                const int row0 = tm * GEMM_TILE;
                const int col0 = tn * GEMM_TILE;
                FragC acc[TF32_FRAGS][TF32_FRAGS];
                for (int r = 0; r < TF32_FRAGS; ++r) {
                    for (int s = 0; s < TF32_FRAGS; ++s) wmma::fill_fragment(acc[r][s], 0.0f);
                }
                for (int l0 = 0; l0 < k; l0 += GEMM_SLAB) {
                    // The slabs, both row-major (what the wmma loads read), rounded to TF32.
                    UNROLL for (int q = 0; q < TF32_LOADS; ++q) {
                        const SlabElement e = gemm_a_slab(ap, tid + q * TF32_THREADS, row0, l0, m, k, a_rs, a_cs);
                        as[e.row][e.col] = wmma::__float_to_tf32(e.value);
                    }
                    UNROLL for (int q = 0; q < TF32_LOADS; ++q) {
                        const SlabElement e = gemm_b_slab(bp, tid + q * TF32_THREADS, col0, l0, n, k, b_rs, b_cs);
                        bs[e.row][e.col] = wmma::__float_to_tf32(e.value);
                    }
                    __syncthreads();
                    UNROLL for (int kk = 0; kk < GEMM_SLAB; kk += TF32_FRAG_K) {
                        FragA fa[TF32_FRAGS];
                        FragB fb[TF32_FRAGS];
                        for (int r = 0; r < TF32_FRAGS; ++r) {
                            wmma::load_matrix_sync(fa[r], &as[warp_row + TF32_FRAG * r][kk], GEMM_SLAB + TF32_PAD);
                        }
                        for (int s = 0; s < TF32_FRAGS; ++s) {
                            wmma::load_matrix_sync(fb[s], &bs[kk][warp_col + TF32_FRAG * s], GEMM_TILE + TF32_PAD);
                        }
                        for (int r = 0; r < TF32_FRAGS; ++r) {
                            for (int s = 0; s < TF32_FRAGS; ++s) wmma::mma_sync(acc[r][s], fa[r], fb[s], acc[r][s]);
                        }
                    }
                    __syncthreads();  // the slabs are rewritten next
                }
                for (int r = 0; r < TF32_FRAGS; ++r) {
                    for (int s = 0; s < TF32_FRAGS; ++s) {
                        wmma::store_matrix_sync(&cs[warp_row + TF32_FRAG * r][warp_col + TF32_FRAG * s], acc[r][s], GEMM_TILE + TF32_PAD, wmma::mem_row_major);
                    }
                }
                __syncthreads();
                for (int e = tid; e < GEMM_TILE * GEMM_TILE; e += TF32_THREADS) {
                    const int gi = row0 + e / GEMM_TILE;
                    const int gj = col0 + e % GEMM_TILE;
                    if (gi >= m || gj >= n) continue;
                    gemm_store(cp + size_t(gi) * n + gj, cs[e / GEMM_TILE][e % GEMM_TILE], beta);
                }
                __syncthreads();  // cs is rewritten by the next tile
            }
        }
    }
#endif
}

// out[r, :] = weight[ids[r], :] for r < rows; a row whose id is not in [0, vocab) becomes NaN
// (the Rust side checks ids before they reach the device; this only keeps reads in bounds).
extern "C" __global__ void matmul_gather_rows_fwd_f32(const float* __restrict__ weight, const int* __restrict__ ids, float* __restrict__ out, int rows, int dim, int vocab) {
    const size_t total = size_t(rows) * dim;
    for (size_t i = global_thread_index(); i < total; i += global_thread_count()) {
        const int id = ids[i / dim];
        const size_t d = i % dim;
        out[i] = (id >= 0 && id < vocab) ? weight[size_t(id) * dim + d] : __int_as_float(0x7fc00000);
    }
}

// dweight[v, :] = sum over r with ids[r] == v, in r order, of dy[r, :] (zero for unused rows).
// One block per table row (grid-stride over v); 1-D blocks of a multiple of 32 threads, at most
// 1024. Each chunk of blockDim ids is compacted into `matches` (the r's that hit v, in order) by a
// prefix sum: a shuffle scan inside each warp, then every thread adds the counts of the warps
// before its own.
extern "C" __global__ void matmul_scatter_add_rows_bwd_f32(const float* __restrict__ dy, const int* __restrict__ ids, float* __restrict__ dweight, int rows, int dim, int vocab) {
    __shared__ int matches[1024];
    __shared__ int warp_hits[WARP_SIZE];
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    for (int v = blockIdx.x; v < vocab; v += gridDim.x) {
        float* row = dweight + size_t(v) * dim;
        for (int d = threadIdx.x; d < dim; d += blockDim.x) row[d] = 0.0f;
        for (int base = 0; base < rows; base += blockDim.x) {
            const int r = base + threadIdx.x;
            const int hit = (r < rows && ids[r] == v) ? 1 : 0;
            int upto = hit;  // hits among lanes 0..=lane of this warp
            for (int offset = 1; offset < WARP_SIZE; offset *= 2) {
                const int below = __shfl_up_sync(FULL_MASK, upto, offset);
                if (lane >= offset) upto += below;
            }
            if (lane == WARP_SIZE - 1) warp_hits[warp] = upto;
            __syncthreads();
            int before = 0;
            int total = 0;
            for (int w = 0; w < warps; ++w) {
                const int h = warp_hits[w];
                before += w < warp ? h : 0;
                total += h;
            }
            if (hit) matches[before + upto - 1] = r;
            __syncthreads();
            // Thread t owns features t, t + blockDim.x, ...: it zeroed them above and is the only
            // one to add into them, so no other thread's writes can interleave.
            for (int d = threadIdx.x; d < dim; d += blockDim.x) {
                float acc = row[d];
                for (int j = 0; j < total; ++j) acc += dy[size_t(matches[j]) * dim + d];
                row[d] = acc;
            }
            __syncthreads();  // matches and warp_hits are rewritten by the next chunk
        }
    }
}
