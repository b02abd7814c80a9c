// The CUDA half of the core: host entry points over device pointers. No CUDA types here,
// so the bindings compile with the host compiler; a stream is passed as its handle's bits.
// Every pointer is device memory on `device`; every call is queued on `stream` and returns
// once its results are ready (the k-means copies its per-iteration numbers back).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pyprune::cuda {

/// One contiguous n x d float32 matrix on the device.
struct DeviceMatrix {
    const float* data = nullptr;
    int64_t rows = 0, cols = 0;
};

/// Where one layer's k-means results go (device arrays the caller allocated).
struct KMeansOutputs {
    float* centroids = nullptr;   ///< K x d
    int64_t* labels = nullptr;    ///< n
    int64_t* reps = nullptr;      ///< K
    float* cosines = nullptr;     ///< n
    float* norms = nullptr;       ///< n
    float* rep_cosines = nullptr; ///< n
    float* rep_residuals = nullptr;  ///< n
};

/// What one layer's run did, copied to the host.
struct KMeansSummary {
    int n_iter = 0;
    std::vector<double> objective;
    std::vector<int64_t> changed, moved, reseeded, recomputed;
};

/// Number of CUDA devices the runtime sees (0 without a driver or a GPU).
int device_count();

/// Spherical k-means of every layer in one call: the same algorithm, seeds and arithmetic as
/// the CPU solver's packed path (csrc/cuda/kmeans_logic.h), all layers side by side (one
/// thread block each, after one batched normalisation and one batched Gram product).
/// `inits` is empty or one (possibly null) K x d device pointer per layer, each checked
/// finite and non-zero by the caller. A layer with a non-finite value raises, after the
/// batch, the CPU solver's error for the first such layer.
/// `scratch` (device memory of `scratch_bytes` >= spherical_kmeans_scratch(...), which the
/// caller allocates: torch's caching allocator) holds the batch's working arrays.
std::vector<KMeansSummary> spherical_kmeans(const std::vector<DeviceMatrix>& xs, const std::vector<int64_t>& ks,
                                            int max_iter, bool early_stop, uint64_t seed, bool reuse,
                                            const std::vector<const float*>& inits,
                                            const std::vector<KMeansOutputs>& outs, void* scratch,
                                            size_t scratch_bytes, int device, uintptr_t stream);

/// Bytes of scratch spherical_kmeans needs for layers of these (n, d), K and max_iter, with
/// or without starting centroids (with: no Gram matrix). A caller that allocates it (torch's
/// caching allocator) lets its framework manage the memory.
size_t spherical_kmeans_scratch(const std::vector<std::pair<int64_t, int64_t>>& shapes, const std::vector<int64_t>& ks,
                                int max_iter, const std::vector<bool>& has_init);

/// Per-filter L1 (p = 1) or L2 (p = 2) norms of every layer: the CPU's sums (16 lanes in
/// double), so the same bits.
void filter_norms(const std::vector<DeviceMatrix>& xs, int p, const std::vector<float*>& outs, int device,
                  uintptr_t stream);

/// n x n cosine similarities of one layer's filters (zero filters give 0).
void cosine_similarity(const DeviceMatrix& x, float* out, int device, uintptr_t stream);

/// FPGM score per filter: summed Euclidean distance to every other filter, in double.
void fpgm_scores(const DeviceMatrix& x, float* out, int device, uintptr_t stream);

}  // namespace pyprune::cuda
