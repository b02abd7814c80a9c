// One 64 x 64 tile of the batched products kernel (products_cuda.cu), split into the steps a
// thread of its 256 runs between barriers, so the host build (kmeans_emulation.cpp) runs the
// same index arithmetic thread by thread: which tile, which rows of A (a row list, a count
// read on the device), the depth steps with zero padding, the chain's restart every kKC
// entries of depth, and the stores (both halves of a symmetric product).
#pragma once

#include <cstdint>

#include "kmeans_logic.h"

namespace pyprune::device {

struct ProductTask {
    const float* a = nullptr;        ///< rows of A, d floats each
    const int64_t* rows = nullptr;   ///< null: rows 0..count-1; else A row and out row rows[r]
    const int64_t* count = nullptr;  ///< null: m rows; else the value *count (<= m)
    const int64_t* skip = nullptr;   ///< null, or a flag: non-zero skips the task
    int64_t m = 0;                   ///< rows the grid covers (the most there can be)
    const float* b = nullptr;        ///< n x d
    int64_t n = 0, d = 0;
    float* out = nullptr;            ///< out[row * n + col]
    int sym = 0;                     ///< a == b, m == n, all rows: the Gram matrix
    int64_t first = 0;               ///< index of the task's first tile in its batch
};

constexpr int kTile = 64;      // output tile: 64 x 64
constexpr int kDepth = 16;     // depth step (divides kKC, so a chain restarts on a step)
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each
static_assert(kKC % kDepth == 0, "the chain's restarts fall on depth steps");

/// Tiles of a task: the upper triangle of tiles for a symmetric product.
PP_HD int64_t tiles_of(const ProductTask& t) {
    const int64_t tm = (t.m + kTile - 1) / kTile, tn = (t.n + kTile - 1) / kTile;
    return t.sym ? tn * (tn + 1) / 2 : tm * tn;
}

/// Tile `idx` of the task: its first row and column.
PP_FN void tile_origin(const ProductTask& t, int64_t idx, int64_t* r0, int64_t* c0) {
    const int64_t tn = (t.n + kTile - 1) / kTile;
    int64_t ti = 0, tj = 0;
    if (t.sym) {
        while (idx >= tn - ti) {  // tile row ti holds the tiles ti..tn-1
            idx -= tn - ti;
            ++ti;
        }
        tj = ti + idx;
    } else {
        ti = idx / tn;
        tj = idx % tn;
    }
    *r0 = ti * kTile;
    *c0 = tj * kTile;
}

/// The A row (and out row) of tile row r, or -1 past the rows in use.
PP_FN int64_t tile_row(const ProductTask& t, int64_t count, int64_t r0, int r) {
    const int64_t q = r0 + r;
    return q < count ? (t.rows != nullptr ? t.rows[q] : q) : -1;
}

/// Shared memory of a tile: one depth step of A's and B's rows, and A's row indices.
struct TileShared {
    float as[kDepth][kTile + 4], bs[kDepth][kTile + 4];
    int64_t arow[kTile];
};

/// Thread `tid`'s share of loading depth step kb (zeros past the rows and the depth).
PP_FN void tile_load(const ProductTask& t, int64_t c0, int64_t kb, int tid, TileShared& sh) {
    for (int q = 0; q < kTile * kDepth / kThreads; ++q) {
        const int e = tid + kThreads * q, r = e / kDepth, c = e % kDepth;
        const int64_t k = kb + c, ar = sh.arow[r];
        sh.as[c][r] = (ar >= 0 && k < t.d) ? t.a[ar * t.d + k] : 0.0f;
        sh.bs[c][r] = (c0 + r < t.n && k < t.d) ? t.b[(c0 + r) * t.d + k] : 0.0f;
    }
}

/// Thread (tx, ty)'s accumulators through depth step kb: first the chain's restart where kb
/// starts a block of kKC (the finished block folded into tot), then the step's 16 products.
/// Padding adds fma(0, 0, acc) = acc: an accumulator started at +0 is never -0.
PP_FN void tile_step(const TileShared& sh, int64_t kb, int tx, int ty, float (&acc)[4][4], float (&tot)[4][4]) {
    if (kb > 0 && kb % kKC == 0) {
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) {
                tot[i][j] = kb == kKC ? acc[i][j] : tot[i][j] + acc[i][j];
                acc[i][j] = 0.0f;
            }
    }
    for (int kk = 0; kk < kDepth; ++kk) {
        float a[4], b[4];
        for (int i = 0; i < 4; ++i) {
            a[i] = sh.as[kk][ty * 4 + i];
            b[i] = sh.bs[kk][tx * 4 + i];
        }
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] = PP_FMAF(a[i], b[j], acc[i][j]);
    }
}

/// Thread (tx, ty)'s 4 x 4 results: the last block added to the earlier ones.
PP_FN void tile_store(const ProductTask& t, const TileShared& sh, int64_t c0, int tx, int ty, const float (&acc)[4][4],
                      const float (&tot)[4][4]) {
    for (int i = 0; i < 4; ++i) {
        const int64_t r = sh.arow[ty * 4 + i];
        if (r < 0) continue;
        for (int j = 0; j < 4; ++j) {
            const int64_t c = c0 + tx * 4 + j;
            if (c >= t.n) continue;
            const float v = t.d > kKC ? tot[i][j] + acc[i][j] : acc[i][j];
            t.out[r * t.n + c] = v;
            if (t.sym) t.out[c * t.n + r] = v;
        }
    }
}

}  // namespace pyprune::device
