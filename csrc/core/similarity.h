// Filter statistics: per-filter norms, pairwise cosine similarity, FPGM scores.
#pragma once

#include <cstdint>
#include <vector>

#include "matrix.h"

namespace pyprune {

/// Per-filter Lp norms (p = 1 or 2) of many layers in one call.
/// `out[l]` must hold `xs[l].rows` floats. Layers and rows are spread over threads.
void filter_norms(const std::vector<MatrixView>& xs, int p, const std::vector<float*>& out,
                  int threads);

/// Copy `x` into `out` (rows x cols) with every row scaled to unit L2 norm.
/// A row of norm zero stays all-zero: it has no direction, so its cosine with
/// anything (itself included) is defined as 0. With `norms` (rows floats), each row's L2
/// norm before scaling is stored there too. `out` may be x's own storage (scaled in place).
/// Returns the first row whose norm is not finite (one holding an infinite or NaN value),
/// -1 when there is none: callers that check here need no separate pass over the values.
int64_t normalize_rows(const MatrixView& x, float* out, int threads, float* norms = nullptr);

/// Pairwise cosine similarity, out[i * n + j] = <x_i, x_j> / (|x_i| |x_j|), n x n.
/// Zero-norm rows give 0 (see normalize_rows).
void cosine_similarity(const MatrixView& x, float* out, int threads);

/// FPGM (geometric-median) scores: out[i] = sum_j |x_i - x_j|_2 over the signed
/// filters. Small scores lie near the geometric median and are the most replaceable.
void fpgm_scores(const MatrixView& x, float* out, int threads);

}  // namespace pyprune
