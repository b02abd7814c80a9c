// The CUDA k-means's block solver run on the host with one thread: the same source as the
// GPU kernel (kmeans_logic.h), so machines without a GPU test its logic against the CPU
// solver. Slow (every product is a scalar loop): for tests only.
#pragma once

#include <vector>

#include "../core/kmeans.h"
#include "../core/matrix.h"

namespace pyprune::device {

/// As spherical_kmeans_batch on contiguous layers (no column blocks); `params[l].kernel`
/// is ignored. The results' kernel field is unset (GemmKernel::blas).
std::vector<KMeansResult> spherical_kmeans_emulated(const std::vector<MatrixView>& xs,
                                                    const std::vector<KMeansParams>& params,
                                                    const std::vector<const float*>& inits);

}  // namespace pyprune::device
