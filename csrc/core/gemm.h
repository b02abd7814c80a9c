// The core's matrix products.
//
// The k-means computes S^T = C X^T many times over with the same X (the filters), so X is
// packed once per layer into panels and a register-blocked kernel streams them. There is
// one kernel per instruction set (gemm_kernels.h): AVX-512F, AVX2+FMA and a portable C++
// one that the compiler vectorises (Arm and other CPUs). The fastest one the CPU runs is
// chosen at run time, once; PYPRUNE_GEMM=avx512|avx2|portable|blas forces one (blas: no
// packed kernel, every product through OpenBLAS). Also here: the one helper that splits
// rows over threads, and the products and timings the tests and benchmarks call.
#pragma once

#include <omp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "buffer.h"
#include "matrix.h"

namespace pyprune {

/// A way to run the products. `blas` is OpenBLAS; the others are the core's packed kernels.
enum class GemmKernel { blas, portable, avx2, avx512 };

/// "blas", "portable", "avx2" or "avx512".
const char* kernel_name(GemmKernel kernel);

/// The kernel of that name (case-insensitive); throws std::invalid_argument naming the
/// choices for any other name.
GemmKernel parse_kernel(const std::string& name);

/// True when this CPU (and this build) can run `kernel`: blas and portable always, avx2
/// with AVX2 and FMA, avx512 with AVX-512F.
bool kernel_supported(GemmKernel kernel);

/// Throw std::invalid_argument, naming what the CPU lacks and what it can run, unless
/// kernel_supported(kernel).
void check_kernel(GemmKernel kernel);

/// The kernels this CPU runs, fastest first: [avx512,] [avx2,] portable, blas.
std::vector<GemmKernel> supported_kernels();

/// The kernel the k-means uses: PYPRUNE_GEMM when it is set (read once, at the first call),
/// else the first of supported_kernels(). An unknown PYPRUNE_GEMM value, or a path this CPU
/// cannot run, throws std::invalid_argument at every call (so at first use, never at load).
GemmKernel default_kernel();

/// True when default_kernel() is a packed kernel (anything but blas).
bool packed_gemm_available();

/// Rows of a matrix packed for one kernel: panels of `panel` rows (the kernel's register
/// tile width), each stored column by column ([panel][col][row in panel]), the last one
/// padded with zero rows.
struct PackedRows {
    /// the kernel the rows were packed for (gemm_packed runs that one)
    GemmKernel kernel = GemmKernel::portable;
    /// rows per panel
    int64_t panel = 1;
    /// rows and columns of the packed matrix
    int64_t rows = 0, cols = 0;
    /// ceil(rows / panel) * panel * cols floats (uninitialised until packed)
    Buffer<float> data;
};

/// Rows per panel of a packed kernel (1 for blas: rows are never packed).
int64_t panel_width(GemmKernel kernel);

/// Pack the rows of x (rows x cols, row-major, leading dimension ld) for `kernel`, which
/// must be a packed kernel this CPU runs (checked).
PackedRows pack_rows(const float* x, int64_t rows, int64_t cols, int64_t ld, GemmKernel kernel);

/// The same into `out`, reusing its storage (only the padding rows are zero-filled), with
/// the panels split over `threads` (0: all).
void pack_rows(const float* x, int64_t rows, int64_t cols, int64_t ld, GemmKernel kernel, PackedRows* out,
               int threads = 1);

/// Size `out` for `rows` x `cols` on `kernel` (a packed kernel this CPU runs: checked),
/// reusing its storage, without writing a panel: pack_panel(q) then writes panel q. Lets a
/// caller pack each panel of rows right after producing them, while they are in cache.
void prepare_packed(int64_t rows, int64_t cols, GemmKernel kernel, PackedRows* out);

/// Pack panel q of x (`out->panel` rows from row q * panel, leading dimension ld) into
/// `out`, sized by prepare_packed; rows past the end become zeros.
void pack_panel(const float* x, int64_t ld, int64_t q, PackedRows* out);

/// out[m x (hi - lo)] = A[m x cols] * B[lo:hi]^T, with ldo the leading dimension of out,
/// on the kernel `b` was packed for. `lo` must be a multiple of b.panel (panels are never
/// split; see split_rows). beta = 0.
void gemm_packed(int64_t m, const float* a, int64_t lda, const PackedRows& b, int64_t lo, int64_t hi,
                 float* out, int64_t ldo);

/// For each panel q in q0..q1 of `b` (b.rows rows): out[0:r, q*panel : q*panel + width]
/// = A[0:r] * (panel q)^T, r = min(b.rows, (q + 1) * panel): the blocks on and above the
/// diagonal of A B^T, the upper part of a Gram matrix when A is B unpacked. Each entry has
/// the bits gemm_packed gives it; blocks of A are reused across the panels of the range.
void gemm_packed_upper(const float* a, int64_t lda, const PackedRows& b, int64_t q0, int64_t q1, float* out,
                       int64_t ldo);

/// out[m x (hi - lo)] = A[m x cols] * B[lo:hi]^T, where B is `b` (row-major, leading
/// dimension cols): through the packed kernel when `packed` (B packed by pack_rows) is
/// given, else through the BLAS. `lo` must then be a panel boundary (see split_rows).
void gemm_rows(int64_t m, const float* a, int64_t lda, const float* b, const PackedRows* packed,
               int64_t cols, int64_t lo, int64_t hi, float* out, int64_t ldo);

/// Start of part t when rows 0..n are split into `parts` ranges of about equal size, each
/// starting on a multiple of `grain` (1: anywhere; a panel width: whole panels).
int64_t split_rows(int64_t n, int parts, int t, int64_t grain);

/// Split rows 0..n into `parts` ranges (split_rows with `grain`) and call
/// body(part, lo, hi) for each, one OpenMP thread per range; with parts <= 1 it runs
/// body(0, 0, n) on the calling thread. The body must not throw. Every row split of the
/// core goes through here (k-means assignment and seeding, similarity, GEMM timing).
template <class Body>
void parallel_rows(int64_t n, int parts, int64_t grain, Body&& body) {
    if (parts <= 1) {
        body(0, int64_t{0}, n);
        return;
    }
#pragma omp parallel num_threads(parts)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        body(t, split_rows(n, T, t, grain), split_rows(n, T, t + 1, grain));
    }
}

/// Seconds to run one square GEMM of size `size` with `threads` threads (rows of A split,
/// one single-threaded GEMM each, as the k-means runs its products): the machine's bound
/// for `kernel` (best of `repeats`, after one warm-up run; B is packed beforehand).
double time_gemm(int64_t size, int threads, int repeats, GemmKernel kernel);

/// out[m x n] = A[m x d] * B[n x d]^T on `kernel`, B's rows split over `threads` (whole
/// panels), as the k-means assignment splits the filters. For the tests.
std::vector<float> products(const MatrixView& a, const MatrixView& b, GemmKernel kernel, int threads);

}  // namespace pyprune
