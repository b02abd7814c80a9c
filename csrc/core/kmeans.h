// Spherical k-means over filter directions, for one layer or many at once.
#pragma once

#include <cstdint>
#include <vector>

#include "matrix.h"

namespace pyprune {

/// Parameters of one clustering run (one layer).
struct KMeansParams {
    /// number of clusters K, 1 <= K <= number of filters
    int64_t k = 1;
    /// maximum number of Lloyd iterations (one assignment + one centroid update each)
    int max_iter = 100;
    /// stop at the first assignment step that changes no label (the objective can no longer move)
    bool early_stop = true;
    /// seed of the k-means++ initialisation; the same seed gives the same result
    uint64_t seed = 0;
    /// recompute the similarities of only the centroids that moved since the previous
    /// assignment and reuse the others (after the first few iterations most centroids keep
    /// their members, so most of each iteration's product is skipped). The labels and the
    /// objective are those of a full recomputation; false recomputes everything.
    bool reuse = true;
};

/// Result of one clustering run.
struct KMeansResult {
    int64_t n = 0, d = 0, k = 0;
    /// K x d unit-norm centroids, row-major
    std::vector<float> centroids;
    /// cluster of each filter (n), from the last assignment step
    std::vector<int64_t> labels;
    /// K distinct filter indices: per cluster the member closest to its centroid
    /// (a cluster left empty takes the closest filter not yet chosen)
    std::vector<int64_t> representatives;
    /// per iteration: sum over filters of the cosine to the assigned centroid (never decreases)
    std::vector<double> objective;
    /// iterations run (assignment steps)
    int n_iter = 0;
};

/// Cluster the rows of `x` by cosine similarity.
///
/// Rows are normalised to unit length; assignment takes the centroid of highest cosine
/// (ties: lowest index); the update sets each centroid to its members' normalised mean.
/// A cluster left empty is re-seeded with the worst-served filter (lowest cosine to its
/// centroid) not already used as a seed. Zero-norm filters have no direction: their
/// cosine with every centroid is 0, they are never picked as a seed while a non-zero
/// filter is available, and with all filters zero the centroids are unit basis vectors.
/// `init` (K x d, may be null) replaces k-means++ (it is normalised first).
/// `threads` splits this one layer's work (rows of each GEMM) over that many threads.
KMeansResult spherical_kmeans(const MatrixView& x, const KMeansParams& params, const float* init,
                              int threads);

/// Cluster many layers in one call. Large layers run one after another with their rows
/// split over all threads; the rest run side by side, one thread each, largest first.
/// `inits` is empty or has one (possibly null) pointer per layer.
std::vector<KMeansResult> spherical_kmeans_batch(const std::vector<MatrixView>& xs,
                                                 const std::vector<KMeansParams>& params,
                                                 const std::vector<const float*>& inits,
                                                 int threads);

/// Knee of a decreasing curve by the maximum-distance-to-chord rule (the Kneedle idea):
/// both axes are scaled to [0, 1] and the point farthest below the straight line joining
/// the first and the last point is the knee. It needs no tuning constant, does not depend
/// on the units of either axis, and for a convex decreasing cost (k-means distortion
/// against K) it picks the point after which extra clusters buy the least.
/// Returns the index into `xs`. A flat curve returns 0 (the smallest K).
int64_t knee_index(const std::vector<double>& xs, const std::vector<double>& ys);

/// Automatic cluster count per layer: for every layer and every K in `ks[l]`, run
/// spherical k-means and take the final distortion sum(1 - cos); the knee of the
/// log-distortion curve (relative gains; floored at 1e-3 of the first value so K = n with
/// zero distortion does not dominate) is the chosen K. `curves` (if not null) receives the distortions, per layer per K.
std::vector<int64_t> choose_k(const std::vector<MatrixView>& xs,
                              const std::vector<std::vector<int64_t>>& ks, int max_iter,
                              uint64_t seed, int threads,
                              std::vector<std::vector<double>>* curves);

/// Seconds to run one square GEMM of size `size` with `threads` threads (row-split, one
/// thread each, as the k-means kernel runs its GEMMs): gives the machine's bound.
/// `packed` times the core's packed kernel (operand packed beforehand) instead of the BLAS.
double time_gemm(int64_t size, int threads, int repeats, bool packed);

/// out[m x n] = A[m x d] * B[n x d]^T through the BLAS or the packed kernel (for tests).
std::vector<float> products(const MatrixView& a, const MatrixView& b, bool packed, int threads);

}  // namespace pyprune
