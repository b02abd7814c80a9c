// Thin wrapper over the BLAS the core links (scipy-openblas32, prefixed symbols).
//
// OpenBLAS threads with pthreads, not OpenMP: the core pins it to one thread at
// load time and does all of its parallelism itself, so a BLAS call made inside an
// OpenMP region never spawns a second pool.
#pragma once

#include <cstdint>

#include <cblas.h>

namespace pyprune::blas {

/// Make every BLAS call single-threaded (called once when the extension loads).
inline void pin_single_thread() { scipy_openblas_set_num_threads(1); }

/// C[m x n] = A[m x k] * B[n x k]^T + beta * C, all row-major.
inline void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                    const float* b, int64_t ldb, float* c, int64_t ldc, float beta = 0.0f) {
    if (m == 0 || n == 0) return;
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
                      static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, a,
                      static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
                      static_cast<blasint>(ldc));
}

/// C[m x n] = A[m x k] * B[k x n] + beta * C, all row-major.
inline void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                    const float* b, int64_t ldb, float* c, int64_t ldc, float beta = 0.0f) {
    if (m == 0 || n == 0) return;
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(m),
                      static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, a,
                      static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
                      static_cast<blasint>(ldc));
}

/// B[cols x rows] = A[rows x cols]^T, row-major (OpenBLAS's out-of-place transpose).
inline void transpose(int64_t rows, int64_t cols, const float* a, int64_t lda, float* b, int64_t ldb) {
    if (rows == 0 || cols == 0) return;
    scipy_cblas_somatcopy(CblasRowMajor, CblasTrans, static_cast<blasint>(rows), static_cast<blasint>(cols),
                          1.0f, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb));
}

/// y[m] = A[m x k] * x[k], row-major.
inline void gemv(int64_t m, int64_t k, const float* a, int64_t lda, const float* x, float* y) {
    if (m == 0) return;
    scipy_cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(m),
                      static_cast<blasint>(k), 1.0f, a, static_cast<blasint>(lda), x, 1, 0.0f, y,
                      1);
}

}  // namespace pyprune::blas
