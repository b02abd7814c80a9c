// A stand-in for scipy-openblas32's cblas.h, for building the core's GEMM test driver
// where that wheel does not exist (a cross build for aarch64): the same prefixed names,
// implemented as naive loops in gemm_test.cpp. Never used by the extension.
#pragma once

typedef int blasint;
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };

void scipy_openblas_set_num_threads(int n);
void scipy_cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint m, blasint n,
                       blasint k, float alpha, const float* a, blasint lda, const float* b, blasint ldb,
                       float beta, float* c, blasint ldc);
void scipy_cblas_sgemv(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, blasint m, blasint n, float alpha,
                       const float* a, blasint lda, const float* x, blasint incx, float beta, float* y,
                       blasint incy);
void scipy_cblas_somatcopy(CBLAS_ORDER order, CBLAS_TRANSPOSE trans, blasint rows, blasint cols, float alpha,
                           const float* a, blasint lda, float* b, blasint ldb);
