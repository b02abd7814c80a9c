#include "gemm_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYPRUNE_X86 1
#include <immintrin.h>
#endif

#include <algorithm>

namespace pyprune::kernels {

namespace {

/// Store an MR x W tile kept in `tmp` (row stride W) into out[0:MR, 0:ncols], adding when
/// `acc`. Used for the last, partly padded panel of a product.
template <int MR, int64_t W>
inline void store_partial(const float* tmp, float* out, int64_t ldo, int64_t ncols, bool acc) {
    for (int i = 0; i < MR; ++i) {
        float* o = out + i * ldo;
        const float* s = tmp + i * W;
        if (acc) {
            for (int64_t j = 0; j < ncols; ++j) o[j] += s[j];
        } else {
            for (int64_t j = 0; j < ncols; ++j) o[j] = s[j];
        }
    }
}

// ---------------------------------------------------------------------------------------
// Portable: plain loops. On x86-64 (GCC, glibc) the same loops are also built for
// x86-64-v3 (AVX2, FMA) and v4 (AVX-512), and the loader picks the widest the CPU runs, as
// for reduce.cpp: forced on an x86 CPU, the portable path then runs what the compiler makes
// of plain C++ for that CPU (with its fused multiply-adds), not the SSE2 baseline, which no
// x86 machine that prunes models is limited to. Elsewhere (aarch64: NEON) one build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define PYPRUNE_PORTABLE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYPRUNE_PORTABLE_CLONES
#endif
// The accumulators are a small fixed-size array; with the row loop
// unrolled and the column loop marked `omp simd`, GCC keeps them in vector registers
// (checked in the generated code: no loads or stores of the accumulators in the depth loop).
// Left to itself GCC vectorises the depth loop instead (A is contiguous along it), which
// needs a transpose per step and runs 4-6x slower.

template <int MR>
inline __attribute__((always_inline)) void tile_portable(const float* a, int64_t lda, const float* b, int64_t kc, float* out,
                          int64_t ldo, int64_t ncols, bool acc) {
    constexpr int64_t W = kPortableWidth;
    float r[MR][W];
    for (int i = 0; i < MR; ++i)
        for (int64_t j = 0; j < W; ++j) r[i][j] = 0.0f;
    for (int64_t t = 0; t < kc; ++t) {
        const float* bt = b + t * W;
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const float x = a[i * lda + t];
#pragma omp simd
            for (int64_t j = 0; j < W; ++j) r[i][j] += x * bt[j];
        }
    }
    store_partial<MR, W>(&r[0][0], out, ldo, ncols, acc);
}

}  // namespace

PYPRUNE_PORTABLE_CLONES void portable(int64_t m, const float* a, int64_t lda, const float* panel, int64_t kc,
                                      float* out, int64_t ldo, int64_t ncols, bool acc) {
    constexpr int MR = kPortableRows;
    static_assert(MR == 5 || MR == 6, "the remainder switch covers 1..5 rows");
    int64_t i = 0;
    for (; i + MR <= m; i += MR) tile_portable<MR>(a + i * lda, lda, panel, kc, out + i * ldo, ldo, ncols, acc);
    a += i * lda;
    out += i * ldo;
    switch (m - i) {
        case 5: tile_portable<5>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 4: tile_portable<4>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 3: tile_portable<3>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 2: tile_portable<2>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 1: tile_portable<1>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        default: break;
    }
}

#ifdef PYPRUNE_X86

bool x86_kernels_built() { return true; }

namespace {

// The accumulators of the x86 kernels are named variables, one per register, not an array:
// GCC 12 keeps an array of vectors in memory (the unaligned loads of the panel may alias it)
// and stores every accumulator at every depth step, which halves the speed.

// ---------------------------------------------------------------------------------------
// AVX2 + FMA: 6 rows x 16 columns = 12 ymm accumulators, 2 for the panel step, 1 for the
// broadcast of A: 15 of the 16 registers. Per depth step 2 panel loads and 6 broadcast loads
// feed 12 FMAs.

/// Store (or add) one tile row held in two ymm registers.
__attribute__((target("avx2,fma"))) inline void put_avx2(float* o, __m256 lo, __m256 hi, int64_t ncols,
                                                        bool acc) {
    if (ncols == kAvx2Width) {
        _mm256_storeu_ps(o, acc ? _mm256_add_ps(_mm256_loadu_ps(o), lo) : lo);
        _mm256_storeu_ps(o + 8, acc ? _mm256_add_ps(_mm256_loadu_ps(o + 8), hi) : hi);
        return;
    }
    alignas(32) float tmp[kAvx2Width];
    _mm256_store_ps(tmp, lo);
    _mm256_store_ps(tmp + 8, hi);
    store_partial<1, kAvx2Width>(tmp, o, 0, ncols, acc);
}

#define PYPRUNE_AVX2_ROW(i)                                                   \
    if constexpr (MR > i) {                                                   \
        const __m256 x = _mm256_broadcast_ss(a + i * lda + t);                \
        c##i##0 = _mm256_fmadd_ps(x, b0, c##i##0);                            \
        c##i##1 = _mm256_fmadd_ps(x, b1, c##i##1);                            \
    }

template <int MR>
__attribute__((target("avx2,fma"))) inline void tile_avx2(const float* a, int64_t lda, const float* b,
                                                         int64_t kc, float* out, int64_t ldo,
                                                         int64_t ncols, bool acc) {
    static_assert(MR >= 1 && MR <= 6, "6 rows at most");
    const __m256 z = _mm256_setzero_ps();
    __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z, c41 = z,
           c50 = z, c51 = z;
    for (int64_t t = 0; t < kc; ++t) {
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        b += kAvx2Width;
        PYPRUNE_AVX2_ROW(0)
        PYPRUNE_AVX2_ROW(1)
        PYPRUNE_AVX2_ROW(2)
        PYPRUNE_AVX2_ROW(3)
        PYPRUNE_AVX2_ROW(4)
        PYPRUNE_AVX2_ROW(5)
    }
    put_avx2(out, c00, c01, ncols, acc);
    if constexpr (MR > 1) put_avx2(out + 1 * ldo, c10, c11, ncols, acc);
    if constexpr (MR > 2) put_avx2(out + 2 * ldo, c20, c21, ncols, acc);
    if constexpr (MR > 3) put_avx2(out + 3 * ldo, c30, c31, ncols, acc);
    if constexpr (MR > 4) put_avx2(out + 4 * ldo, c40, c41, ncols, acc);
    if constexpr (MR > 5) put_avx2(out + 5 * ldo, c50, c51, ncols, acc);
}

#undef PYPRUNE_AVX2_ROW

// ---------------------------------------------------------------------------------------
// AVX-512F: 8 rows x 48 columns = 24 zmm accumulators, 3 for the panel step.

/// Store (or add) the first `ncols` columns of one tile row held in three zmm registers.
__attribute__((target("avx512f"))) inline void put_avx512(float* o, __m512 v0, __m512 v1, __m512 v2,
                                                          int64_t ncols, bool acc) {
    const __m512 v[3] = {v0, v1, v2};
    for (int q = 0; q < 3; ++q) {
        const int64_t lo = 16 * q;
        if (lo >= ncols) break;
        const int64_t cnt = std::min<int64_t>(16, ncols - lo);
        const __mmask16 mask = static_cast<__mmask16>((1u << cnt) - 1u);
        const __m512 y = acc ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o + lo), v[q]) : v[q];
        _mm512_mask_storeu_ps(o + lo, mask, y);
    }
}

#define PYPRUNE_AVX512_ROW(i)                                                 \
    if constexpr (MR > i) {                                                   \
        const __m512 x = _mm512_set1_ps(a[i * lda + t]);                      \
        c##i##0 = _mm512_fmadd_ps(x, b0, c##i##0);                            \
        if constexpr (NC > 1) c##i##1 = _mm512_fmadd_ps(x, b1, c##i##1);      \
        if constexpr (NC > 2) c##i##2 = _mm512_fmadd_ps(x, b2, c##i##2);      \
    }

/// MR rows by the first NC x 16 columns of a 48-wide panel: a panel with 32 or fewer
/// columns (a layer of 32 filters, the last panel of a layer) skips the zero padding's
/// multiply-adds. Every column's dot is the same FMA chain whatever NC is.
template <int MR, int NC>
__attribute__((target("avx512f"))) inline void tile_avx512(const float* a, int64_t lda, const float* b,
                                                           int64_t kc, float* out, int64_t ldo,
                                                           int64_t ncols, bool acc) {
    static_assert(MR >= 1 && MR <= 8, "8 rows at most");
    static_assert(NC >= 1 && NC <= 3, "three zmm columns at most");
    const __m512 z = _mm512_setzero_ps();
    __m512 c00 = z, c01 = z, c02 = z, c10 = z, c11 = z, c12 = z, c20 = z, c21 = z, c22 = z, c30 = z,
           c31 = z, c32 = z, c40 = z, c41 = z, c42 = z, c50 = z, c51 = z, c52 = z, c60 = z, c61 = z,
           c62 = z, c70 = z, c71 = z, c72 = z;
    for (int64_t t = 0; t < kc; ++t) {
        const __m512 b0 = _mm512_loadu_ps(b);
        const __m512 b1 = NC > 1 ? _mm512_loadu_ps(b + 16) : z;
        const __m512 b2 = NC > 2 ? _mm512_loadu_ps(b + 32) : z;
        b += kAvx512Width;
        PYPRUNE_AVX512_ROW(0)
        PYPRUNE_AVX512_ROW(1)
        PYPRUNE_AVX512_ROW(2)
        PYPRUNE_AVX512_ROW(3)
        PYPRUNE_AVX512_ROW(4)
        PYPRUNE_AVX512_ROW(5)
        PYPRUNE_AVX512_ROW(6)
        PYPRUNE_AVX512_ROW(7)
    }
    put_avx512(out, c00, c01, c02, ncols, acc);
    if constexpr (MR > 1) put_avx512(out + 1 * ldo, c10, c11, c12, ncols, acc);
    if constexpr (MR > 2) put_avx512(out + 2 * ldo, c20, c21, c22, ncols, acc);
    if constexpr (MR > 3) put_avx512(out + 3 * ldo, c30, c31, c32, ncols, acc);
    if constexpr (MR > 4) put_avx512(out + 4 * ldo, c40, c41, c42, ncols, acc);
    if constexpr (MR > 5) put_avx512(out + 5 * ldo, c50, c51, c52, ncols, acc);
    if constexpr (MR > 6) put_avx512(out + 6 * ldo, c60, c61, c62, ncols, acc);
    if constexpr (MR > 7) put_avx512(out + 7 * ldo, c70, c71, c72, ncols, acc);
}

#undef PYPRUNE_AVX512_ROW

}  // namespace

__attribute__((target("avx2,fma"))) void avx2(int64_t m, const float* a, int64_t lda, const float* panel,
                                              int64_t kc, float* out, int64_t ldo, int64_t ncols,
                                              bool acc) {
    constexpr int MR = 6;
    int64_t i = 0;
    for (; i + MR <= m; i += MR) tile_avx2<MR>(a + i * lda, lda, panel, kc, out + i * ldo, ldo, ncols, acc);
    a += i * lda;
    out += i * ldo;
    switch (m - i) {
        case 5: tile_avx2<5>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 4: tile_avx2<4>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 3: tile_avx2<3>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 2: tile_avx2<2>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 1: tile_avx2<1>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        default: break;
    }
}

namespace {

template <int NC>
__attribute__((target("avx512f"))) void avx512_cols(int64_t m, const float* a, int64_t lda, const float* panel,
                                                    int64_t kc, float* out, int64_t ldo, int64_t ncols, bool acc) {
    constexpr int MR = 8;
    int64_t i = 0;
    for (; i + MR <= m; i += MR)
        tile_avx512<MR, NC>(a + i * lda, lda, panel, kc, out + i * ldo, ldo, ncols, acc);
    a += i * lda;
    out += i * ldo;
    switch (m - i) {
        case 7: tile_avx512<7, NC>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 6: tile_avx512<6, NC>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 5: tile_avx512<5, NC>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 4: tile_avx512<4, NC>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 3: tile_avx512<3, NC>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 2: tile_avx512<2, NC>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 1: tile_avx512<1, NC>(a, lda, panel, kc, out, ldo, ncols, acc); break;
        default: break;
    }
}

}  // namespace

__attribute__((target("avx512f"))) void avx512(int64_t m, const float* a, int64_t lda, const float* panel,
                                               int64_t kc, float* out, int64_t ldo, int64_t ncols,
                                               bool acc) {
    switch ((ncols + 15) / 16) {  // the zmm columns the panel's real rows fill
        case 1: avx512_cols<1>(m, a, lda, panel, kc, out, ldo, ncols, acc); break;
        case 2: avx512_cols<2>(m, a, lda, panel, kc, out, ldo, ncols, acc); break;
        default: avx512_cols<3>(m, a, lda, panel, kc, out, ldo, ncols, acc); break;
    }
}

__attribute__((target("avx2"))) void transpose8_avx2(const float* x, int64_t ld, int64_t cols, float* out,
                                                      int64_t ldo) {
    int64_t t = 0;
    for (; t + 8 <= cols; t += 8) {
        // 8 x 8 block in registers: rows r0..r7 (8 columns each) in, columns c0..c7 out.
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(x + i * ld + t);
        __m256 u[8], v[8];
        for (int i = 0; i < 4; ++i) {  // pairs of rows interleaved
            u[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            u[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for (int i = 0; i < 2; ++i) {  // then pairs of pairs
            v[4 * i] = _mm256_shuffle_ps(u[4 * i], u[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
            v[4 * i + 1] = _mm256_shuffle_ps(u[4 * i], u[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
            v[4 * i + 2] = _mm256_shuffle_ps(u[4 * i + 1], u[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
            v[4 * i + 3] = _mm256_shuffle_ps(u[4 * i + 1], u[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        for (int i = 0; i < 4; ++i) {  // and the 128-bit halves of rows 0-3 and 4-7
            _mm256_storeu_ps(out + (t + i) * ldo, _mm256_permute2f128_ps(v[i], v[i + 4], 0x20));
            _mm256_storeu_ps(out + (t + i + 4) * ldo, _mm256_permute2f128_ps(v[i], v[i + 4], 0x31));
        }
    }
    for (; t < cols; ++t)
        for (int64_t i = 0; i < 8; ++i) out[t * ldo + i] = x[i * ld + t];
}

#else  // not x86-64: only the portable kernel exists; gemm.cpp never calls these

bool x86_kernels_built() { return false; }

void transpose8_avx2(const float*, int64_t, int64_t, float*, int64_t) {}

void avx2(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, bool) {}
void avx512(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, bool) {}

#endif  // PYPRUNE_X86

}  // namespace pyprune::kernels
