// Ridge least squares for layer-wise reconstruction: the weights W (m x d) that best map
// a pruned layer's inputs A (rows x d) to the unpruned network's outputs B (rows x m),
//   W = argmin |A W^T - B|^2 + lambda' |W|^2,   lambda' = lambda * trace(A^T A) / d,
// by the normal equations (A^T A + lambda' I) W^T = A^T B, solved by Cholesky in double.
#pragma once

#include <cstdint>
#include <vector>

#include "matrix.h"

namespace pyprune {

/// Parameters of one solve.
struct RidgeParams {
    /// ridge strength, relative to the mean diagonal entry of A^T A (scale-free); raised
    /// tenfold, up to 1, where the Cholesky factorisation fails
    double lambda = 1e-4;
};

/// Result of one solve.
struct RidgeResult {
    int64_t m = 0, d = 0;
    /// m x d solution, row-major (one row per output, like a Linear's weight)
    std::vector<float> w;
    /// |A W^T - B| / |B| (Frobenius), on the rows given
    double residual = 0.0;
    /// the relative lambda that was used (larger than asked when A^T A was singular)
    double lambda = 0.0;
};

/// One layer. `a` and `b` must have the same number of rows.
RidgeResult ridge_solve(const MatrixView& a, const MatrixView& b, const RidgeParams& params);

/// Many layers in one call, side by side over `threads` threads (one BLAS thread each).
std::vector<RidgeResult> ridge_solve_batch(const std::vector<MatrixView>& as, const std::vector<MatrixView>& bs,
                                           const RidgeParams& params, int threads);

}  // namespace pyprune
