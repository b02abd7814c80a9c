// Batched products out[r][c] = <a_row(r), b_c> of many layers in one launch, every entry the
// packed CPU kernels' chain: fused multiply-adds in depth order, restarted every kKC
// entries of depth, the blocks added in order. So a Gram matrix or a similarity row is the
// same bits as on the CPU's packed path. Used for the Gram matrices X X^T (symmetric: only
// the tiles on and above the diagonal are multiplied, each written to both halves, as fma is
// symmetric in its factors) and for the k-means's assignment products C X^T over the rows
// of S^T a layer recomputes (a row list and its length read on the device).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "products_tile.h"

namespace pyprune::cuda {

using device::ProductTask;

/// Device bytes launch_products needs as scratch for `count` tasks.
inline size_t product_scratch(size_t count) { return sizeof(ProductTask) * (count > 0 ? count : 1); }

/// Tasks uploaded once, run any number of times (the k-means's every assignment).
struct ProductBatch {
    const ProductTask* tasks = nullptr;  ///< device copy
    int count = 0;
    int64_t tiles = 0;
};

/// Upload `tasks` into `scratch` (product_scratch(tasks.size()) bytes of device memory, alive
/// while the batch runs), queued on `stream`.
ProductBatch upload_products(std::vector<ProductTask> tasks, cudaStream_t stream, void* scratch);

/// Queue one run of the batch's products on `stream`.
void run_products(const ProductBatch& batch, cudaStream_t stream);

}  // namespace pyprune::cuda
