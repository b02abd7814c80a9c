// Spherical k-means of many layers on the GPU, every layer at once: one batched
// normalisation, one batched Gram product (the layers whose CPU solver keeps one), the
// starting centroids (one thread block per layer), then per iteration one batched products
// kernel for the rows of S^T that are multiplied out, between two block-per-layer steps of the
// solver in kmeans_logic.h (which rows; then the argmax and the update). Built with
// --fmad=false: only the explicit fmaf of the chains fuses, as on the CPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "../core/check.h"
#include "../core/matrix.h"
#include "check_cuda.cuh"
#include "core_cuda.h"
#include "products_cuda.cuh"
#include "kmeans_jobs.h"
#include "kmeans_logic.h"

namespace pyprune::cuda {

namespace {

/// Thread per filter row of the batch: normalise it, note the first non-finite one.
__global__ void normalize_kernel(const device::Job* jobs, const int64_t* first_row, int njobs, int64_t total) {
    const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (g >= total) return;
    const int lo = device::entry_of(g, njobs, [&](int i) { return first_row[i]; });
    const device::Job& J = jobs[lo];
    const int64_t i = g - first_row[lo];
    if (!device::normalize_row(J, i))
        atomicMin(reinterpret_cast<unsigned long long*>(J.info + 1), static_cast<unsigned long long>(i));
}

/// Whether layer J holds a non-finite value (the host raises; its solver kernels do nothing).
__device__ bool bad(const device::Job& J) { return J.info[1] < J.n; }

__global__ void __launch_bounds__(device::kBlock) start_kernel(const device::Job* jobs) {
    __shared__ device::Ctl ctl;
    const device::Job& J = jobs[blockIdx.x];
    if (bad(J)) {
        if (threadIdx.x == 0) {
            for (int f = 0; f < device::kStateSize; ++f) J.state[f] = 0;
            J.state[device::kDone] = 1;
        }
        return;
    }
    device::BlockSolver(J, ctl).start();
}

__global__ void __launch_bounds__(device::kBlock) prepare_kernel(const device::Job* jobs) {
    __shared__ device::Ctl ctl;
    device::BlockSolver(jobs[blockIdx.x], ctl).prepare();
}

__global__ void __launch_bounds__(device::kBlock) finish_assign_kernel(const device::Job* jobs, int it, bool update) {
    __shared__ device::Ctl ctl;
    device::BlockSolver(jobs[blockIdx.x], ctl).finish_assign(it, update);
}

__global__ void __launch_bounds__(device::kBlock) finish_kernel(const device::Job* jobs) {
    __shared__ device::Ctl ctl;
    const device::Job& J = jobs[blockIdx.x];
    if (bad(J)) return;
    device::BlockSolver(J, ctl).finish();
}

size_t align_up(size_t v) { return (v + 255) / 256 * 256; }

/// Where everything of a batch lives in its one scratch block: each job's scratch
/// (place_scratch), the per-layer block the host reads back (state, info, objective,
/// stats), the job list, the first rows, the row lists and the two product batches.
struct Layout {
    std::vector<size_t> offset, plist;
    size_t meta_at = 0, jobs_at = 0, rows_at = 0, grams_at = 0, products_at = 0, bytes = 0;
    int64_t per_meta = 0;
};

/// The layout of jobs whose n, d, k and use_gram are set.
Layout layout_of(std::vector<device::Job>& jobs, int max_iter) {
    const size_t L = jobs.size();
    Layout y;
    y.per_meta = device::kStateSize + 2 + (max_iter + 1) + 4 * (max_iter + 1);
    for (auto& J : jobs) {
        y.offset.push_back(y.bytes);
        y.bytes += device::place_scratch(&J, nullptr);
    }
    y.meta_at = y.bytes;
    y.bytes += align_up(sizeof(int64_t) * static_cast<size_t>(y.per_meta) * L);
    y.jobs_at = y.bytes;
    y.bytes += align_up(sizeof(device::Job) * L);
    y.rows_at = y.bytes;
    y.bytes += align_up(sizeof(int64_t) * L);
    for (const auto& J : jobs) {
        y.plist.push_back(y.bytes);
        y.bytes += align_up(sizeof(int64_t) * static_cast<size_t>(J.k));
    }
    y.grams_at = y.bytes;
    y.bytes += align_up(product_scratch(L));
    y.products_at = y.bytes;
    y.bytes += align_up(product_scratch(L));
    return y;
}

/// A job's shape and the decisions that depend on it only.
device::Job shaped_job(int64_t n, int64_t d, int64_t k, bool has_init) {
    device::Job J;
    J.n = n;
    J.d = d;
    J.k = k;
    J.trials = device::trials_for(k);
    PYPRUNE_CHECK(J.trials <= device::kMaxTrials, "K = ", k, " is too large");
    J.use_gram = device::gram_for(n, k, has_init) ? 1 : 0;
    return J;
}

}  // namespace

size_t spherical_kmeans_scratch(const std::vector<std::pair<int64_t, int64_t>>& shapes, const std::vector<int64_t>& ks,
                                int max_iter, const std::vector<bool>& has_init) {
    PYPRUNE_CHECK(ks.size() == shapes.size() && has_init.size() == shapes.size(),
                  "spherical_kmeans_scratch: one K and init flag per layer");
    std::vector<device::Job> jobs;
    for (size_t l = 0; l < shapes.size(); ++l)
        jobs.push_back(shaped_job(shapes[l].first, shapes[l].second, ks[l], has_init[l]));
    return layout_of(jobs, max_iter).bytes;
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // no driver: clear the error, report none
        return 0;
    }
    return n;
}

std::vector<KMeansSummary> spherical_kmeans(const std::vector<DeviceMatrix>& xs, const std::vector<int64_t>& ks,
                                            int max_iter, bool early_stop, uint64_t seed, bool reuse,
                                            const std::vector<const float*>& inits,
                                            const std::vector<KMeansOutputs>& outs, void* scratch,
                                            size_t scratch_bytes, int device, uintptr_t stream_bits) {
    const size_t L = xs.size();
    PYPRUNE_CHECK(ks.size() == L && outs.size() == L && (inits.empty() || inits.size() == L),
                  "spherical_kmeans (CUDA): one K, output set and init per layer");
    PYPRUNE_CHECK(max_iter >= 0, "max_iter must be >= 0, got ", max_iter);
    for (size_t l = 0; l < L; ++l) {
        PYPRUNE_CHECK(xs[l].rows >= 1 && xs[l].cols >= 1, "weights[", l, "]: empty matrix (", xs[l].rows, " x ",
                      xs[l].cols, ")");
        PYPRUNE_CHECK(ks[l] >= 1 && ks[l] <= xs[l].rows, "weights[", l, "]: K must satisfy 1 <= K <= n = ",
                      xs[l].rows, ", got K = ", ks[l]);
    }
    std::vector<KMeansSummary> summary(L);
    if (L == 0) return summary;
    DeviceGuard guard(device);
    cudaStream_t stream = as_stream(stream_bits);
    std::vector<device::Job> jobs;
    for (size_t l = 0; l < L; ++l) {
        const float* init = inits.empty() ? nullptr : inits[l];
        device::Job J = shaped_job(xs[l].rows, xs[l].cols, ks[l], init != nullptr);
        J.x = xs[l].data;
        J.init = init;
        J.max_iter = max_iter;
        J.early_stop = early_stop ? 1 : 0;
        J.reuse = reuse ? 1 : 0;
        J.seed = seed;
        J.c = outs[l].centroids;
        J.labels = outs[l].labels;
        J.reps = outs[l].reps;
        J.cosines = outs[l].cosines;
        J.norms = outs[l].norms;
        J.rep_cos = outs[l].rep_cosines;
        J.rep_res = outs[l].rep_residuals;
        jobs.push_back(J);
    }
    const Layout y = layout_of(jobs, max_iter);
    const int64_t per_meta = y.per_meta;
    std::vector<ProductTask> grams, products;
    PYPRUNE_CHECK(scratch != nullptr && scratch_bytes >= y.bytes, "spherical_kmeans (CUDA): the scratch has ",
                  scratch_bytes, " bytes, the batch needs ", y.bytes, " (spherical_kmeans_scratch)");
    char* base = static_cast<char*>(scratch);
    auto* meta = reinterpret_cast<int64_t*>(base + y.meta_at);
    std::vector<int64_t> first_row(L);
    int64_t total_rows = 0;
    for (size_t l = 0; l < L; ++l) {
        device::Job& J = jobs[l];
        device::place_scratch(&J, base + y.offset[l]);
        J.plist = reinterpret_cast<int64_t*>(base + y.plist[l]);
        int64_t* m = meta + per_meta * static_cast<int64_t>(l);
        J.state = m;
        J.info = m + device::kStateSize;
        J.objective = reinterpret_cast<double*>(J.info + 2);
        J.stats = J.info + 2 + (max_iter + 1);
        first_row[l] = total_rows;
        total_rows += J.n;
        if (J.use_gram) grams.push_back(device::gram_task(J));
        products.push_back(device::assign_task(J));
    }
    // info[1] (first non-finite filter) starts above every n: 0x7f7f... bytes
    PYPRUNE_CUDA(cudaMemsetAsync(meta, 0x7f, sizeof(int64_t) * per_meta * L, stream));
    auto* djobs = reinterpret_cast<device::Job*>(base + y.jobs_at);
    auto* drows = reinterpret_cast<int64_t*>(base + y.rows_at);
    PYPRUNE_CUDA(cudaMemcpyAsync(djobs, jobs.data(), sizeof(device::Job) * L, cudaMemcpyHostToDevice, stream));
    PYPRUNE_CUDA(cudaMemcpyAsync(drows, first_row.data(), sizeof(int64_t) * L, cudaMemcpyHostToDevice, stream));
    const int nb = 128;
    normalize_kernel<<<static_cast<unsigned>((total_rows + nb - 1) / nb), nb, 0, stream>>>(djobs, drows, static_cast<int>(L),
                                                                                          total_rows);
    PYPRUNE_CUDA(cudaGetLastError());
    run_products(upload_products(grams, stream, base + y.grams_at), stream);
    const ProductBatch assign_products = upload_products(products, stream, base + y.products_at);
    const unsigned nl = static_cast<unsigned>(L);
    start_kernel<<<nl, device::kBlock, 0, stream>>>(djobs);
    PYPRUNE_CUDA(cudaGetLastError());
    std::vector<int64_t> host(static_cast<size_t>(per_meta * L));
    auto all_done = [&]() {  // the layers' states, read back: has every layer stopped?
        PYPRUNE_CUDA(cudaMemcpyAsync(host.data(), meta, sizeof(int64_t) * host.size(), cudaMemcpyDeviceToHost, stream));
        PYPRUNE_CUDA(cudaStreamSynchronize(stream));
        for (size_t l = 0; l < L; ++l)
            if (host[per_meta * l + device::kDone] == 0) return false;
        return true;
    };
    for (int it = 0; it < std::max(1, max_iter); ++it) {
        prepare_kernel<<<nl, device::kBlock, 0, stream>>>(djobs);
        PYPRUNE_CUDA(cudaGetLastError());
        run_products(assign_products, stream);
        finish_assign_kernel<<<nl, device::kBlock, 0, stream>>>(djobs, it, max_iter > 0);
        PYPRUNE_CUDA(cudaGetLastError());
        if (early_stop && it + 1 < max_iter && all_done()) break;
    }
    finish_kernel<<<nl, device::kBlock, 0, stream>>>(djobs);
    PYPRUNE_CUDA(cudaGetLastError());
    PYPRUNE_CUDA(cudaMemcpyAsync(host.data(), meta, sizeof(int64_t) * host.size(), cudaMemcpyDeviceToHost, stream));
    PYPRUNE_CUDA(cudaStreamSynchronize(stream));
    for (size_t l = 0; l < L; ++l) {  // the first layer with a non-finite value raises
        const int64_t* m = host.data() + per_meta * static_cast<int64_t>(l) + device::kStateSize;
        if (m[1] < xs[l].rows) {
            std::vector<float> row(static_cast<size_t>(xs[l].cols));
            PYPRUNE_CUDA(cudaMemcpy(row.data(), xs[l].data + m[1] * xs[l].cols, sizeof(float) * row.size(),
                                    cudaMemcpyDeviceToHost));
            raise_non_finite(row.data(), xs[l].cols, m[1], "weights[" + std::to_string(l) + "]");
        }
    }
    for (size_t l = 0; l < L; ++l) {
        const int64_t* m = host.data() + per_meta * static_cast<int64_t>(l) + device::kStateSize;
        KMeansSummary& s = summary[l];
        s.n_iter = static_cast<int>(m[0]);
        const int n_obj = max_iter == 0 ? 1 : s.n_iter;
        s.objective.resize(static_cast<size_t>(n_obj));
        std::memcpy(s.objective.data(), m + 2, sizeof(double) * n_obj);
        const int64_t* st = m + 2 + (max_iter + 1);
        for (int it = 0; it < s.n_iter; ++it) {
            s.changed.push_back(st[4 * it]);
            s.moved.push_back(st[4 * it + 1]);
            s.reseeded.push_back(st[4 * it + 2]);
            s.recomputed.push_back(st[4 * it + 3]);
        }
    }
    return summary;
}

}  // namespace pyprune::cuda
