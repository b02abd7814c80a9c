#include "gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYPRUNE_X86 1
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "blas.h"
#include "check.h"

namespace pyprune {

namespace {

constexpr int64_t NR = PackedRows::kPanel;  // 3 zmm of packed rows per k step
constexpr int64_t KC = 256;                 // depth block: one panel block stays in L1/L2
constexpr int64_t MC = 128;                 // rows of A per block: stays in L2

#ifdef PYPRUNE_X86
/// MR x 48 tile of out = A[0:MR, 0:kc] * panel^T, accumulated when `acc`. `ncols` <= 48
/// columns are stored (the rest are padding).
template <int MR>
__attribute__((target("avx512f"))) inline void tile(const float* a, int64_t lda, const float* b,
                                                    int64_t kc, float* out, int64_t ldo, int64_t ncols,
                                                    bool acc) {
    __m512 r[MR][3];
    for (int i = 0; i < MR; ++i)
        for (int v = 0; v < 3; ++v) r[i][v] = _mm512_setzero_ps();
    for (int64_t t = 0; t < kc; ++t) {
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32);
        b += NR;
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m512 x = _mm512_set1_ps(a[i * lda + t]);
            r[i][0] = _mm512_fmadd_ps(x, b0, r[i][0]);
            r[i][1] = _mm512_fmadd_ps(x, b1, r[i][1]);
            r[i][2] = _mm512_fmadd_ps(x, b2, r[i][2]);
        }
    }
    for (int i = 0; i < MR; ++i) {
        for (int v = 0; v < 3; ++v) {
            const int64_t lo = 16 * v;
            if (lo >= ncols) break;
            const int64_t cnt = std::min<int64_t>(16, ncols - lo);
            const __mmask16 mask = static_cast<__mmask16>((1u << cnt) - 1u);
            float* o = out + i * ldo + lo;
            const __m512 y = acc ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), r[i][v]) : r[i][v];
            _mm512_mask_storeu_ps(o, mask, y);
        }
    }
}

__attribute__((target("avx512f"))) void rows_times_panel(int64_t m, const float* a, int64_t lda,
                                                          const float* b, int64_t kc, float* out,
                                                          int64_t ldo, int64_t ncols, bool acc) {
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) tile<8>(a + i * lda, lda, b, kc, out + i * ldo, ldo, ncols, acc);
    a += i * lda;
    out += i * ldo;
    switch (m - i) {
        case 7: tile<7>(a, lda, b, kc, out, ldo, ncols, acc); break;
        case 6: tile<6>(a, lda, b, kc, out, ldo, ncols, acc); break;
        case 5: tile<5>(a, lda, b, kc, out, ldo, ncols, acc); break;
        case 4: tile<4>(a, lda, b, kc, out, ldo, ncols, acc); break;
        case 3: tile<3>(a, lda, b, kc, out, ldo, ncols, acc); break;
        case 2: tile<2>(a, lda, b, kc, out, ldo, ncols, acc); break;
        case 1: tile<1>(a, lda, b, kc, out, ldo, ncols, acc); break;
        default: break;
    }
}

#endif  // PYPRUNE_X86

bool detect() {
    const char* env = std::getenv("PYPRUNE_GEMM");
    if (env != nullptr && std::strcmp(env, "blas") == 0) return false;
#ifdef PYPRUNE_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
}

}  // namespace

bool packed_gemm_available() {
    static const bool ok = detect();
    return ok;
}

PackedRows pack_rows(const float* x, int64_t rows, int64_t cols, int64_t ld) {
    PackedRows p;
    p.rows = rows;
    p.cols = cols;
    const int64_t panels = (rows + NR - 1) / NR;
    p.data.assign(static_cast<size_t>(panels * cols * NR), 0.0f);
    for (int64_t q = 0; q < panels; ++q) {
        float* dst = p.data.data() + q * cols * NR;
        for (int64_t j = 0; j < NR && q * NR + j < rows; ++j) {
            const float* src = x + (q * NR + j) * ld;
            for (int64_t t = 0; t < cols; ++t) dst[t * NR + j] = src[t];
        }
    }
    return p;
}

int64_t split_rows(int64_t n, int parts, int t, bool panels) {
    if (!panels) return n * t / parts;
    const int64_t count = (n + NR - 1) / NR;
    return std::min(n, NR * (count * t / parts));
}

void gemm_rows(int64_t m, const float* a, int64_t lda, const float* b, const PackedRows* packed,
               int64_t cols, int64_t lo, int64_t hi, float* out, int64_t ldo) {
    if (packed != nullptr) {
        gemm_packed(m, a, lda, *packed, lo, hi, out, ldo);
    } else {
        blas::gemm_nt(m, hi - lo, cols, a, lda, b + lo * cols, cols, out, ldo);
    }
}

void gemm_packed(int64_t m, const float* a, int64_t lda, const PackedRows& b, int64_t lo, int64_t hi,
                 float* out, int64_t ldo) {
    PYPRUNE_CHECK(lo % NR == 0 && lo >= 0 && hi <= b.rows && lo <= hi,
                  "gemm_packed: bad row range ", lo, "..", hi, " of ", b.rows);
    PYPRUNE_CHECK(packed_gemm_available(), "gemm_packed: this CPU has no AVX-512F");
    if (m == 0 || hi == lo) return;
#ifdef PYPRUNE_X86
    const int64_t d = b.cols;
    for (int64_t mb = 0; mb < m; mb += MC) {
        const int64_t mc = std::min(MC, m - mb);
        for (int64_t kb = 0; kb < d; kb += KC) {
            const int64_t kc = std::min(KC, d - kb);
            for (int64_t q = lo / NR; q * NR < hi; ++q) {
                const float* panel = b.data.data() + q * d * NR + kb * NR;
                const int64_t ncols = std::min(NR, hi - q * NR);
                rows_times_panel(mc, a + mb * lda + kb, lda, panel, kc, out + mb * ldo + (q * NR - lo), ldo,
                                 ncols, kb > 0);
            }
        }
    }
#else
    (void)a, (void)lda, (void)out, (void)ldo;
#endif
}

}  // namespace pyprune
