// The batched products kernel (see products_cuda.cuh).
#include "check_cuda.cuh"
#include "kmeans_logic.h"
#include "products_cuda.cuh"

namespace pyprune::cuda {

namespace {

using device::kThreads;

__global__ void __launch_bounds__(kThreads) products_kernel(const ProductTask* tasks, int ntasks) {
    const int64_t blk = blockIdx.x;
    const int lo = device::entry_of(blk, ntasks, [&](int i) { return tasks[i].first; });
    const ProductTask task = tasks[lo];
    if (task.skip != nullptr && *task.skip != 0) return;
    int64_t r0, c0;
    device::tile_origin(task, blk - task.first, &r0, &c0);
    const int64_t count = task.count != nullptr ? *task.count : task.m;
    if (r0 >= count) return;
    __shared__ device::TileShared sh;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    if (tid < device::kTile) sh.arow[tid] = device::tile_row(task, count, r0, tid);
    __syncthreads();
    float acc[4][4], tot[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = tot[i][j] = 0.0f;
    for (int64_t kb = 0; kb < task.d; kb += device::kDepth) {
        device::tile_load(task, c0, kb, tid, sh);
        __syncthreads();
        device::tile_step(sh, kb, tx, ty, acc, tot);
        __syncthreads();
    }
    device::tile_store(task, sh, c0, tx, ty, acc, tot);
}

}  // namespace

ProductBatch upload_products(std::vector<ProductTask> tasks, cudaStream_t stream, void* scratch) {
    ProductBatch b;
    if (tasks.empty()) return b;
    for (auto& t : tasks) {
        t.first = b.tiles;
        b.tiles += device::tiles_of(t);
    }
    b.tasks = static_cast<const ProductTask*>(scratch);
    b.count = static_cast<int>(tasks.size());
    // From pageable memory: the call returns once the tasks are staged for the copy, so
    // `tasks` may go (CUDA's "API synchronization behavior": pageable host to device).
    PYPRUNE_CUDA(cudaMemcpyAsync(scratch, tasks.data(), sizeof(ProductTask) * tasks.size(), cudaMemcpyHostToDevice,
                                 stream));
    return b;
}

void run_products(const ProductBatch& batch, cudaStream_t stream) {
    if (batch.tiles == 0) return;
    products_kernel<<<static_cast<unsigned>(batch.tiles), kThreads, 0, stream>>>(batch.tasks, batch.count);
    PYPRUNE_CUDA(cudaGetLastError());
}

}  // namespace pyprune::cuda
