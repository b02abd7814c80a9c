#include "similarity.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "blas.h"
#include "check.h"
#include "gemm.h"
#include "reduce.h"

namespace pyprune {

namespace {

double row_norm(const float* r, int64_t d, int p) { return p == 1 ? sum_abs(r, d) : std::sqrt(sum_sq(r, d)); }

}  // namespace

void filter_norms(const std::vector<MatrixView>& xs, int p, const std::vector<float*>& out,
                  int threads) {
    PYPRUNE_CHECK(p == 1 || p == 2, "p must be 1 or 2, got ", p);
    PYPRUNE_CHECK(xs.size() == out.size(), "one output per layer: ", xs.size(), " layers, ",
                  out.size(), " outputs");
    for (size_t l = 0; l < xs.size(); ++l)
        validate(xs[l], ("weights[" + std::to_string(l) + "]").c_str());
    // Flatten (layer, row) into one index space so many small layers share the threads.
    std::vector<int64_t> offset(xs.size() + 1, 0);
    for (size_t l = 0; l < xs.size(); ++l) offset[l + 1] = offset[l] + xs[l].rows;
    const int64_t total = offset.back();
    const int nt = resolve_threads(threads);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 64) if (nt > 1)
    for (int64_t g = 0; g < total; ++g) {
        const size_t l = static_cast<size_t>(
            std::upper_bound(offset.begin(), offset.end(), g) - offset.begin() - 1);
        const int64_t i = g - offset[l];
        const MatrixView& x = xs[l];
        out[l][i] = static_cast<float>(row_norm(x.data + i * x.cols, x.cols, p));
    }
}

int64_t normalize_rows(const MatrixView& x, float* out, int threads, float* norms) {
    const int nt = resolve_threads(threads);
    const int64_t d = x.cols;
    int64_t bad = x.rows;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : bad) if (nt > 1 && x.rows * d > 65536)
    for (int64_t i = 0; i < x.rows; ++i) {
        const float* r = x.data + i * d;
        float* o = out + i * d;
        const double nrm = row_norm(r, d, 2);
        if (!std::isfinite(nrm)) bad = std::min(bad, i);
        if (norms != nullptr) norms[i] = static_cast<float>(nrm);
        const float inv = nrm > 0.0 ? static_cast<float>(1.0 / nrm) : 0.0f;
        scale_row(r, inv, d, o);
    }
    return bad < x.rows ? bad : -1;
}

namespace {

/// out[rows x n] = a[rows x d] * b[n x d]^T with the rows split over threads,
/// each thread running a single-threaded GEMM on its block.
void gemm_nt_rows(const float* a, int64_t rows, const float* b, int64_t n, int64_t d, float* out,
                  int nt) {
    parallel_rows(rows, rows < 2 * 16 ? 1 : nt, 1, [&](int, int64_t lo, int64_t hi) {
        blas::gemm_nt(hi - lo, n, d, a + lo * d, d, b, d, out + lo * n, n);
    });
}

}  // namespace

void cosine_similarity(const MatrixView& x, float* out, int threads) {
    validate(x, "weight");
    const int nt = resolve_threads(threads);
    std::vector<float> xn(static_cast<size_t>(x.rows * x.cols));
    normalize_rows(x, xn.data(), nt);
    gemm_nt_rows(xn.data(), x.rows, xn.data(), x.rows, x.cols, out, nt);
}

void fpgm_scores(const MatrixView& x, float* out, int threads) {
    validate(x, "weight");
    const int nt = resolve_threads(threads);
    const int64_t n = x.rows, d = x.cols;
    std::vector<double> sq(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        const double r = row_norm(x.data + i * d, d, 2);
        sq[i] = r * r;
    }
    // |xi - xj|^2 = |xi|^2 + |xj|^2 - 2 <xi, xj>: Gram blocks through GEMM, the
    // distances and their sums in double. Blocks of rows bound the scratch memory.
    const int64_t block = 256;
    std::vector<float> gram(static_cast<size_t>(std::min(n, block) * n));
    for (int64_t lo = 0; lo < n; lo += block) {
        const int64_t hi = std::min(n, lo + block);
        gemm_nt_rows(x.data + lo * d, hi - lo, x.data, n, d, gram.data(), nt);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && (hi - lo) * n > 16384)
        for (int64_t i = lo; i < hi; ++i) {
            const float* g = gram.data() + (i - lo) * n;
            double acc = 0.0;
            for (int64_t j = 0; j < n; ++j) {
                if (j == i) continue;
                const double d2 = sq[i] + sq[j] - 2.0 * static_cast<double>(g[j]);
                acc += d2 > 0.0 ? std::sqrt(d2) : 0.0;
            }
            out[i] = static_cast<float>(acc);
        }
    }
}

}  // namespace pyprune
