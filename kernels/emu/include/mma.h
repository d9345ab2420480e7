// mma.h for the emulator: the part of CUDA's warp matrix API (`nvcuda::wmma`) that the kernels
// use, the TF32 16×16×8 tile product, run on the host. build.rs puts this folder on the emulator's
// include path, so `#include <mma.h>` in a kernel finds this file there and CUDA's own under nvcc.
//
// On the GPU a fragment is spread over the 32 lanes of a warp in a layout CUDA leaves unspecified;
// kernels may only load, store, fill, convert and multiply fragments. So the emulator picks its own
// layout, the simplest that keeps the warp's lanes honest:
// - an operand fragment (matrix_a: 16×8, matrix_b: 8×16) is held whole by every lane;
// - the accumulator (16×16) is spread: lane `l` holds elements l, l + 32, ..., l + 224 of the
//   row-major tile (8 each, as on the hardware), and stores only those.
// So a thread that reads a tile another lane stored, without a __syncwarp() or __syncthreads()
// between, reads the poison of shared memory in one of the emulator's two lane orders.
//
// Every call is warp-collective, as on the hardware: it ends with the warp's barrier (a lane that
// skips the call deadlocks the launch, which the runtime reports), and load and store check that
// all lanes pass the same pointer and stride, that the pointer is 256-bit aligned and that the
// stride is a multiple of 16 bytes (CUDA's rules; the hardware faults or misreads otherwise).
//
// Products: TF32 keeps 10 of float's 23 mantissa bits, so a product of two TF32 values is exact in
// float; each accumulator element adds its 8 products to its old value in k order, rounding after
// each add. The tensor core adds in its own order, so the GPU's results differ from these in the
// last bits, not more.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// Rounds to TF32 (10 mantissa bits) to nearest, ties away from zero, as `cvt.rna.tf32.f32` does:
// add half of the dropped 13 bits' unit, then clear them. NaN and infinity pass unchanged.
inline float __float_to_tf32(float in) {
    std::uint32_t bits = std::bit_cast<std::uint32_t>(in);
    if ((bits & 0x7f800000u) == 0x7f800000u) return in;
    bits = (bits + 0x1000u) & 0xffffe000u;
    return std::bit_cast<float>(bits);
}

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment;

// An operand tile of `Rows × Cols`, held whole by every lane, row-major.
template <int Rows, int Cols>
struct operand_fragment {
    static constexpr int rows = Rows;
    static constexpr int cols = Cols;
    static constexpr int num_elements = Rows * Cols;
    float x[num_elements];
};

template <class Layout>
class fragment<matrix_a, 16, 16, 8, precision::tf32, Layout> : public operand_fragment<16, 8> {};
template <class Layout>
class fragment<matrix_b, 16, 16, 8, precision::tf32, Layout> : public operand_fragment<8, 16> {};

// The 16×16 accumulator: this lane's 8 elements (see the top of the file).
template <>
class fragment<accumulator, 16, 16, 8, float> {
   public:
    static constexpr int num_elements = 8;
    float x[num_elements];
};
using accumulator_fragment = fragment<accumulator, 16, 16, 8, float>;

namespace detail {

inline constexpr int tile_side = 16;

// The row-major tile index of element `t` of this lane's accumulator.
inline int accumulator_index(int t) { return int(darts_emu::this_thread.lane) + warpSize * t; }

[[noreturn]] inline void fail(const char* call, const std::string& why) {
    throw std::runtime_error(std::string("wmma::") + call + ": " + why);
}

// The checks CUDA states for load_matrix_sync and store_matrix_sync, and that the whole warp takes
// part with the same arguments.
inline void check_access(const char* call, const void* p, unsigned ldm) {
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    if (threads % warpSize != 0) fail(call, "the block is not whole warps");
    if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0) fail(call, "pointer not 256-bit aligned");
    if (ldm % 4 != 0) fail(call, "ldm is not a multiple of 16 bytes");
    if (darts_emu::shuffle(p, 0) != p || darts_emu::shuffle(ldm, 0) != ldm) {
        fail(call, "lanes of one warp passed different pointers or strides");
    }
}

// Element (r, c) of a matrix at `p` with leading dimension `ldm` in `layout`.
inline std::size_t offset(int r, int c, unsigned ldm, bool row_major) {
    return row_major ? std::size_t(r) * ldm + c : std::size_t(c) * ldm + r;
}

template <int Rows, int Cols>
void load(operand_fragment<Rows, Cols>& f, const float* p, unsigned ldm, bool row_major) {
    check_access("load_matrix_sync", p, ldm);
    for (int r = 0; r < Rows; ++r) {
        for (int c = 0; c < Cols; ++c) f.x[r * Cols + c] = p[offset(r, c, ldm, row_major)];
    }
    darts_emu::sync_warp();
}

}  // namespace detail

template <class Layout>
void load_matrix_sync(fragment<matrix_a, 16, 16, 8, precision::tf32, Layout>& a, const float* p,
                      unsigned ldm) {
    detail::load(a, p, ldm, std::is_same_v<Layout, row_major>);
}

template <class Layout>
void load_matrix_sync(fragment<matrix_b, 16, 16, 8, precision::tf32, Layout>& b, const float* p,
                      unsigned ldm) {
    detail::load(b, p, ldm, std::is_same_v<Layout, row_major>);
}

template <class Fragment>
void fill_fragment(Fragment& f, float value) {
    for (float& v : f.x) v = value;
}

// d = a·b + c for this lane's accumulator elements.
template <class LayoutA, class LayoutB>
void mma_sync(accumulator_fragment& d, const fragment<matrix_a, 16, 16, 8, precision::tf32, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 8, precision::tf32, LayoutB>& b,
              const accumulator_fragment& c) {
    for (int t = 0; t < accumulator_fragment::num_elements; ++t) {
        const int index = detail::accumulator_index(t);
        const int row = index / detail::tile_side;
        const int col = index % detail::tile_side;
        float sum = c.x[t];
        for (int l = 0; l < 8; ++l) sum += a.x[row * 8 + l] * b.x[l * detail::tile_side + col];
        d.x[t] = sum;
    }
    darts_emu::sync_warp();
}

inline void store_matrix_sync(float* p, const accumulator_fragment& f, unsigned ldm,
                              layout_t layout) {
    detail::check_access("store_matrix_sync", p, ldm);
    for (int t = 0; t < accumulator_fragment::num_elements; ++t) {
        const int index = detail::accumulator_index(t);
        const int row = index / detail::tile_side;
        const int col = index % detail::tile_side;
        p[detail::offset(row, col, ldm, layout == mem_row_major)] = f.x[t];
    }
    darts_emu::sync_warp();
}

}  // namespace nvcuda::wmma
