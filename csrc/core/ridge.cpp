#include "ridge.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <exception>

#include <cblas.h>

#include "check.h"

extern "C" {
// LAPACK from the same OpenBLAS (prefixed symbols, Fortran calling convention).
void scipy_dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info, size_t);
void scipy_dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda, double* b,
                   const int* ldb, int* info, size_t);
}

namespace pyprune {

namespace {

constexpr int64_t kChunk = 512;  // rows converted to double at a time

}  // namespace

RidgeResult ridge_solve(const MatrixView& a, const MatrixView& b, const RidgeParams& params) {
    validate(a, "inputs");
    validate(b, "targets");
    PYPRUNE_CHECK(a.rows == b.rows, "ridge: inputs have ", a.rows, " rows and targets ", b.rows);
    PYPRUNE_CHECK(params.lambda >= 0.0 && std::isfinite(params.lambda), "ridge: lambda must be >= 0, got ",
                  params.lambda);
    const int64_t n = a.rows, d = a.cols, m = b.cols;
    PYPRUNE_CHECK(d < (int64_t{1} << 31) && m < (int64_t{1} << 31), "ridge: too many columns");
    // G = A^T A (upper triangle, row-major) and H^T = B^T A (m x d), accumulated in double.
    std::vector<double> g(static_cast<size_t>(d * d), 0.0), ht(static_cast<size_t>(m * d), 0.0);
    std::vector<double> ad, bd;
    for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
        const int64_t rows = std::min(kChunk, n - r0);
        ad.assign(a.data + r0 * d, a.data + (r0 + rows) * d);
        bd.assign(b.data + r0 * m, b.data + (r0 + rows) * m);
        scipy_cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<blasint>(d), static_cast<blasint>(rows),
                          1.0, ad.data(), static_cast<blasint>(d), 1.0, g.data(), static_cast<blasint>(d));
        scipy_cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<blasint>(m), static_cast<blasint>(d),
                          static_cast<blasint>(rows), 1.0, bd.data(), static_cast<blasint>(m), ad.data(),
                          static_cast<blasint>(d), 1.0, ht.data(), static_cast<blasint>(d));
    }
    double trace = 0.0;
    for (int64_t i = 0; i < d; ++i) trace += g[i * d + i];
    const double scale = trace > 0.0 ? trace / static_cast<double>(d) : 1.0;
    RidgeResult r;
    r.m = m;
    r.d = d;
    const int nn = static_cast<int>(d), nrhs = static_cast<int>(m);
    std::vector<double> f, x;
    double lambda = params.lambda;
    int info = 1;
    for (int attempt = 0; attempt < 8 && info != 0; ++attempt) {
        f = g;  // row-major upper = column-major lower
        for (int64_t i = 0; i < d; ++i) f[i * d + i] += lambda * scale;
        scipy_dpotrf_("L", &nn, f.data(), &nn, &info, 1);
        if (info != 0) lambda = std::max(lambda * 10.0, 1e-8);
    }
    PYPRUNE_CHECK(info == 0, "ridge: the inputs' Gram matrix is not positive definite even with lambda = ",
                  lambda, " (inputs that are all zero?)");
    x = ht;  // column-major d x m
    scipy_dpotrs_("L", &nn, &nrhs, f.data(), &nn, x.data(), &nn, &info, 1);
    PYPRUNE_CHECK(info == 0, "ridge: the triangular solve failed (info ", info, ")");
    r.lambda = lambda;
    r.w.resize(static_cast<size_t>(m * d));
    for (size_t i = 0; i < r.w.size(); ++i) r.w[i] = static_cast<float>(x[i]);
    // residual |A W^T - B| / |B|
    double num = 0.0, den = 0.0;
    std::vector<float> pred(static_cast<size_t>(kChunk * m));
    for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
        const int64_t rows = std::min(kChunk, n - r0);
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(rows), static_cast<blasint>(m),
                          static_cast<blasint>(d), 1.0f, a.data + r0 * d, static_cast<blasint>(d), r.w.data(),
                          static_cast<blasint>(d), 0.0f, pred.data(), static_cast<blasint>(m));
        for (int64_t i = 0; i < rows * m; ++i) {
            const double t = b.data[r0 * m + i];
            num += (pred[i] - t) * (pred[i] - t);
            den += t * t;
        }
    }
    r.residual = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
    return r;
}

std::vector<RidgeResult> ridge_solve_batch(const std::vector<MatrixView>& as, const std::vector<MatrixView>& bs,
                                           const RidgeParams& params, int threads) {
    PYPRUNE_CHECK(as.size() == bs.size(), "ridge: ", as.size(), " input matrices and ", bs.size(), " targets");
    const int nt = resolve_threads(threads);
    const int64_t L = static_cast<int64_t>(as.size());
    std::vector<RidgeResult> out(static_cast<size_t>(L));
    std::exception_ptr error;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1 && L > 1)
    for (int64_t l = 0; l < L; ++l) {
        try {
            out[l] = ridge_solve(as[l], bs[l], params);
        } catch (...) {
#pragma omp critical
            if (!error) error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);
    return out;
}

}  // namespace pyprune
