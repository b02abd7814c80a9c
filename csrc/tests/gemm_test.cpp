// Stand-alone check of the core's GEMM paths against a naive double-precision loop: every
// path this CPU runs (supported_kernels()), every row count m = 1..17 against every filter
// count n = 1..97 and 256..352 (all remainders of every register tile, with few and with
// many panels per thread), depths that are and are not
// multiples of the 256-deep block, 1 and 2 threads; plus the kernel choice. It needs no
// Python, so it also runs on other CPUs, e.g. the portable path built for aarch64 and run
// under qemu-user (one command, from the repository root):
//
//   aarch64-linux-gnu-g++ -std=c++17 -O3 -fopenmp -static -Wall -Wextra
//       -Icsrc/core -Icsrc/tests/cblas_stub -DPYPRUNE_CBLAS_STUB
//       csrc/tests/gemm_test.cpp csrc/core/gemm.cpp csrc/core/gemm_kernels.cpp csrc/core/matrix.cpp
//       -o /tmp/gemm_test_aarch64 && qemu-aarch64 /tmp/gemm_test_aarch64
//
// Natively, against the real OpenBLAS (scipy-openblas32), -DPYPRUNE_CBLAS_STUB is left out
// and -I/-L point at the wheel's include and lib directories. Exit status 0: all passed.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <vector>

#include "blas.h"
#include "gemm.h"

#ifdef PYPRUNE_CBLAS_STUB
#include <cblas.h>

// Naive stand-ins for the BLAS calls the core makes (row-major only).
void scipy_openblas_set_num_threads(int) {}
void scipy_cblas_sgemm(CBLAS_ORDER, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint m, blasint n, blasint k,
                       float alpha, const float* a, blasint lda, const float* b, blasint ldb, float beta,
                       float* c, blasint ldc) {
    for (blasint i = 0; i < m; ++i)
        for (blasint j = 0; j < n; ++j) {
            double s = 0.0;
            for (blasint t = 0; t < k; ++t) {
                const float x = ta == CblasNoTrans ? a[i * lda + t] : a[t * lda + i];
                const float y = tb == CblasNoTrans ? b[t * ldb + j] : b[j * ldb + t];
                s += static_cast<double>(x) * y;
            }
            c[i * ldc + j] = static_cast<float>(alpha * s + (beta != 0.0f ? beta * c[i * ldc + j] : 0.0));
        }
}
void scipy_cblas_sgemv(CBLAS_ORDER, CBLAS_TRANSPOSE, blasint m, blasint n, float alpha, const float* a,
                       blasint lda, const float* x, blasint, float, float* y, blasint) {
    for (blasint i = 0; i < m; ++i) {
        double s = 0.0;
        for (blasint t = 0; t < n; ++t) s += static_cast<double>(a[i * lda + t]) * x[t];
        y[i] = static_cast<float>(alpha * s);
    }
}
void scipy_cblas_somatcopy(CBLAS_ORDER, CBLAS_TRANSPOSE trans, blasint rows, blasint cols, float alpha,
                           const float* a, blasint lda, float* b, blasint ldb) {
    for (blasint i = 0; i < rows; ++i)
        for (blasint j = 0; j < cols; ++j) {
            if (trans == CblasNoTrans) {
                b[i * ldb + j] = alpha * a[i * lda + j];
            } else {
                b[j * ldb + i] = alpha * a[i * lda + j];
            }
        }
}
#endif

using namespace pyprune;

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
    if (!ok) {
        std::printf("FAIL: %s\n", what);
        ++failures;
    }
}

std::vector<float> random_matrix(int64_t rows, int64_t cols, uint64_t seed) {
    std::vector<float> x(static_cast<size_t>(rows * cols));
    for (auto& v : x) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        v = static_cast<float>(static_cast<double>(seed >> 40) / 16777216.0 - 0.5);
    }
    return x;
}

/// Largest |error| / (1e-4 * sqrt(d) + 1e-4 |want|) over out = a[:m] b[:n]^T: <= 1 passes.
double worst(GemmKernel k, const std::vector<float>& a, const std::vector<float>& b, int64_t m, int64_t n,
             int64_t d, int threads) {
    const auto out = products(MatrixView{a.data(), m, d}, MatrixView{b.data(), n, d}, k, threads);
    double bad = 0.0;
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            double s = 0.0;
            for (int64_t t = 0; t < d; ++t) s += static_cast<double>(a[i * d + t]) * b[j * d + t];
            const double err = std::fabs(out[i * n + j] - s) / (1e-4 * std::sqrt(static_cast<double>(d)) + 1e-4 * std::fabs(s));
            bad = std::max(bad, err);
        }
    return bad;
}

}  // namespace

int main() {
    blas::pin_single_thread();  // as the extension does: the threads are the core's own
    const auto paths = supported_kernels();
    std::printf("paths this CPU runs:");
    for (GemmKernel k : paths) std::printf(" %s", kernel_name(k));
    std::printf("; default: %s\n", kernel_name(default_kernel()));
    expect(paths.size() >= 2 && paths[paths.size() - 2] == GemmKernel::portable && paths.back() == GemmKernel::blas,
           "portable and blas are always there, last");
#if !defined(__x86_64__)
    expect(default_kernel() == GemmKernel::portable, "the portable kernel is the default off x86");
    bool threw = false;
    try {
        check_kernel(GemmKernel::avx2);
    } catch (const std::invalid_argument&) {
        threw = true;
    }
    expect(threw, "avx2 is refused off x86");
#endif
    for (GemmKernel k : paths) {
        for (int64_t d : {1, 7, 256, 300, 600}) {
            const auto a = random_matrix(17, d, 1 + d), b = random_matrix(352, d, 2 + d);
            for (int threads : {1, 2}) {
                double bad = 0.0;
                for (int64_t m = 1; m <= 17; ++m) {
                    for (int64_t n = 1; n <= 97; ++n) bad = std::max(bad, worst(k, a, b, m, n, d, threads));
                    for (int64_t n = 256; n <= 352; ++n) bad = std::max(bad, worst(k, a, b, m, n, d, threads));
                }
                std::printf("%-8s d=%-4lld threads=%d: worst error %.3f of the tolerance\n", kernel_name(k),
                            static_cast<long long>(d), threads, bad);
                expect(bad <= 1.0, "products within tolerance");
            }
        }
        // a block of rows beyond the 128-row block of A and a deep product
        const auto a = random_matrix(130, 1100, 5), b = random_matrix(101, 1100, 6);
        const double bad = worst(k, a, b, 130, 101, 1100, 2);
        std::printf("%-8s m=130 n=101 d=1100: worst error %.3f of the tolerance\n", kernel_name(k), bad);
        expect(bad <= 1.0, "large products within tolerance");
    }
    std::printf(failures == 0 ? "all passed\n" : "%d FAILED\n", failures);
    return failures == 0 ? 0 : 1;
}
