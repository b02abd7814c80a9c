// The CUDA k-means run on the host: the block solver (kmeans_logic.h) with one thread, the
// products kernel's tiles (products_tile.h) thread by thread, in the order the GPU's
// kernels run them. The same source as the GPU's, so machines without a GPU test its logic
// against the CPU solver. Slow (scalar loops): for tests only.
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
