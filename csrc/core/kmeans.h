// Spherical k-means over filter directions, for one layer or many at once.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "buffer.h"
#include "gemm.h"
#include "matrix.h"

namespace pyprune {

/// The filters of one layer as column blocks with the same rows: filter i is the
/// concatenation of every block's row i (a residual stream's producers side by side). The
/// core reads the blocks where they are: no concatenated copy is made. One block is the
/// plain case (a MatrixView converts).
struct Filters {
    std::vector<MatrixView> blocks;
    int64_t rows = 0;  ///< number of filters n
    int64_t cols = 0;  ///< filter length d: the blocks' columns together

    Filters(const MatrixView& x) : blocks{x}, rows(x.rows), cols(x.cols) {}  // NOLINT: implicit on purpose
    /// Checks that there is at least one block and that all have the same rows; `what`
    /// names the layer in the error.
    explicit Filters(std::vector<MatrixView> parts, const std::string& what = "filters");

    /// The one block's row i in place when there is a single block, else row i gathered
    /// into `scratch` (cols floats).
    const float* row(int64_t i, float* scratch) const;
    /// Columns c0..c1 of row i into out.
    void copy(int64_t i, int64_t c0, int64_t c1, float* out) const;
};

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
    /// the kernel of the assignment products; empty: default_kernel() (PYPRUNE_GEMM or the
    /// fastest this CPU runs). Every kernel gives the same clustering up to float rounding.
    std::optional<GemmKernel> kernel;
};

/// What one iteration did (after faiss's ClusteringIterationStats).
struct IterationStats {
    /// filters whose label changed in this iteration's assignment (all n at the first);
    /// 0 in the last iteration of a run that early stopping ended
    int64_t changed = 0;
    /// centroids this iteration's update step moved, re-seeded ones included (<= K); 0 in the
    /// last iteration of a run that early stopping ended (no update runs after it)
    int64_t moved = 0;
    /// empty clusters this iteration's update step re-seeded
    int64_t reseeded = 0;
    /// rows of S^T = C X^T this iteration's assignment recomputed: K for a full product, the
    /// centroids moved since the previous assignment when reuse skips the others
    int64_t recomputed = 0;
    /// wall-clock seconds of the iteration (assignment and update)
    double seconds = 0.0;
};

/// Result of one clustering run.
struct KMeansResult {
    int64_t n = 0, d = 0, k = 0;
    /// K x d unit-norm centroids, row-major
    Buffer<float> centroids;
    /// cluster of each filter (n), from the last assignment step
    std::vector<int64_t> labels;
    /// K distinct filter indices: per cluster the member closest to its centroid
    /// (a cluster left empty takes the closest filter not yet chosen)
    std::vector<int64_t> representatives;
    /// per iteration: sum over filters of the cosine to the assigned centroid (never decreases)
    std::vector<double> objective;
    /// iterations run (assignment steps)
    int n_iter = 0;
    /// per iteration what it did (n_iter entries)
    std::vector<IterationStats> stats;
    /// per filter (n) the cosine to its centroid as returned (labels and centroids of the
    /// result); 0 for a zero filter
    std::vector<float> cosines;
    /// per filter (n) its L2 norm as given (before normalisation)
    std::vector<float> norms;
    /// per filter (n) the cosine to its cluster's representative (1 for a representative, 0
    /// for a zero filter) and the relative residual |x_i - a x_r| / |x_i| of its
    /// least-squares multiple a of the representative x_r (0 for a representative or a zero
    /// filter): what merging a dropped filter into its representative needs
    std::vector<float> rep_cosines, rep_residuals;
    /// the products kernel the run used
    GemmKernel kernel = GemmKernel::blas;
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
KMeansResult spherical_kmeans(const Filters& x, const KMeansParams& params, const float* init,
                              int threads);

/// Cluster many layers in one call. Large layers run one after another with their rows
/// split over all threads; the rest run side by side, one thread each, largest first.
/// `inits` is empty or has one (possibly null) pointer per layer. Every value is checked
/// to be finite while the filters are normalised (not in a pass of its own); a layer that
/// is not raises, after the batch, the error of the first such layer.
std::vector<KMeansResult> spherical_kmeans_batch(const std::vector<Filters>& xs,
                                                 const std::vector<KMeansParams>& params,
                                                 const std::vector<const float*>& inits,
                                                 int threads);

}  // namespace pyprune
