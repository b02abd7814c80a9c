// The core's own GEMM for S^T = C X^T where X (the filters) stays fixed for many products:
// X is packed once into panels, and an AVX-512 register-blocked kernel streams them.
// Where the CPU has no AVX-512 the callers use the BLAS (blas.h) instead.
#pragma once

#include <cstdint>
#include <vector>

namespace pyprune {

/// Rows of a matrix packed for gemm_packed: panels of kPanel rows, each stored
/// column-major ([panel][col][kPanel]) and padded with zero rows.
struct PackedRows {
    static constexpr int64_t kPanel = 48;
    int64_t rows = 0, cols = 0;
    std::vector<float> data;
};

/// True when this CPU runs the packed kernel (AVX-512F), unless PYPRUNE_GEMM=blas is set.
bool packed_gemm_available();

/// Pack the rows of x (rows x cols, row-major, leading dimension ld).
PackedRows pack_rows(const float* x, int64_t rows, int64_t cols, int64_t ld);

/// out[m x (hi - lo)] = A[m x cols] * B[lo:hi]^T, with ldo the leading dimension of out.
/// `lo` must be a multiple of PackedRows::kPanel (panels are never split). beta = 0.
void gemm_packed(int64_t m, const float* a, int64_t lda, const PackedRows& b, int64_t lo, int64_t hi,
                 float* out, int64_t ldo);

/// out[m x (hi - lo)] = A[m x cols] * B[lo:hi]^T, where B is `b` (row-major, leading
/// dimension cols): through the packed kernel when `packed` (B packed by pack_rows) is
/// given, else through the BLAS. `lo` must then be a panel boundary (see split_rows).
void gemm_rows(int64_t m, const float* a, int64_t lda, const float* b, const PackedRows* packed,
               int64_t cols, int64_t lo, int64_t hi, float* out, int64_t ldo);

/// Start of part t when rows 0..n are split into `parts` ranges; with `panels` every range
/// starts on a panel boundary, as gemm_packed needs.
int64_t split_rows(int64_t n, int parts, int t, bool panels);

}  // namespace pyprune
