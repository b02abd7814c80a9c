// The batched products kernel (see products_cuda.cuh).
#include "check_cuda.cuh"
#include "kmeans_logic.h"
#include "products_cuda.cuh"

namespace pyprune::cuda {

namespace {

constexpr int kTile = 64;          // output tile: 64 x 64
constexpr int kDepth = 16;         // depth step (divides kKC, so a chain restarts on a step)
constexpr int kThreads = 256;      // 16 x 16 threads, 4 x 4 outputs each
static_assert(device::kKC % kDepth == 0, "the chain's restarts fall on depth steps");

int64_t tiles_of(const ProductTask& t) {
    const int64_t tm = (t.m + kTile - 1) / kTile, tn = (t.n + kTile - 1) / kTile;
    return t.sym ? tn * (tn + 1) / 2 : tm * tn;
}

__global__ void __launch_bounds__(kThreads) products_kernel(const ProductTask* tasks, int ntasks) {
    const int64_t blk = blockIdx.x;
    int lo = 0, hi = ntasks - 1;  // the last task whose first tile is <= blk
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (tasks[mid].first <= blk) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    const ProductTask task = tasks[lo];
    if (task.skip != nullptr && *task.skip != 0) return;
    const int64_t n = task.n, d = task.d, tn = (n + kTile - 1) / kTile;
    int64_t idx = blk - task.first, ti = 0, tj = 0;
    if (task.sym) {
        while (idx >= tn - ti) {  // tile row ti holds the tiles ti..tn-1
            idx -= tn - ti;
            ++ti;
        }
        tj = ti + idx;
    } else {
        ti = idx / tn;
        tj = idx % tn;
    }
    const int64_t count = task.count != nullptr ? *task.count : task.m;
    const int64_t r0 = ti * kTile, c0 = tj * kTile;
    if (r0 >= count) return;
    __shared__ float as[kDepth][kTile + 4], bs[kDepth][kTile + 4];
    __shared__ int64_t arow[kTile];
    if (threadIdx.x < kTile) {
        const int64_t r = r0 + threadIdx.x;
        arow[threadIdx.x] = r < count ? (task.rows != nullptr ? task.rows[r] : r) : -1;
    }
    __syncthreads();
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4], tot[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = tot[i][j] = 0.0f;
    for (int64_t kb = 0; kb < d; kb += kDepth) {
        if (kb > 0 && kb % device::kKC == 0) {  // the chain restarts: fold the block in
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    tot[i][j] = kb == device::kKC ? acc[i][j] : tot[i][j] + acc[i][j];
                    acc[i][j] = 0.0f;
                }
        }
#pragma unroll
        for (int q = 0; q < kTile * kDepth / kThreads; ++q) {
            const int e = threadIdx.x + kThreads * q, r = e / kDepth, c = e % kDepth;
            const int64_t t = kb + c, ar = arow[r];
            as[c][r] = (ar >= 0 && t < d) ? task.a[ar * d + t] : 0.0f;
            bs[c][r] = (c0 + r < n && t < d) ? task.b[(c0 + r) * d + t] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kDepth; ++kk) {
            float a[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = as[kk][ty * 4 + i];
                bv[i] = bs[kk][tx * 4 + i];
            }
            // padding adds fma(0, 0, acc) = acc: an accumulator started at +0 is never -0
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t r = arow[ty * 4 + i];
        if (r < 0) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int64_t c = c0 + tx * 4 + j;
            if (c >= n) continue;
            const float v = d > device::kKC ? tot[i][j] + acc[i][j] : acc[i][j];
            task.out[r * n + c] = v;
            if (task.sym) task.out[c * n + r] = v;
        }
    }
}

}  // namespace

ProductBatch upload_products(std::vector<ProductTask> tasks, cudaStream_t stream, void* scratch) {
    ProductBatch b;
    if (tasks.empty()) return b;
    for (auto& t : tasks) {
        t.first = b.tiles;
        b.tiles += tiles_of(t);
    }
    b.tasks = static_cast<const ProductTask*>(scratch);
    b.count = static_cast<int>(tasks.size());
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
