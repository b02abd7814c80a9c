// Per-filter norms, cosine similarity and FPGM scores on the GPU. The norms are the CPU's
// sums (16 lanes in double) and so the same bits; the products go through the Gram kernel.
#include <cuda_runtime.h>

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

struct NormTask {
    const float* x;
    float* out;
    int64_t n, d;
};

/// Note row g (an index of the whole batch) as holding a non-finite value: the lowest wins.
__device__ void note_bad(unsigned long long* bad, int64_t g) { atomicMin(bad, static_cast<unsigned long long>(g)); }

__global__ void norms_kernel(const NormTask* tasks, const int64_t* first_row, int ntasks, int64_t total, int p,
                             unsigned long long* bad) {
    const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (g >= total) return;
    const int lo = device::entry_of(g, ntasks, [&](int i) { return first_row[i]; });
    const NormTask& t = tasks[lo];
    const int64_t i = g - first_row[lo];
    const float* r = t.x + i * t.d;
    const double v = p == 1 ? device::lane_sum16(t.d, [=](int64_t q) {
        const double a = r[q];
        return a < 0.0 ? -a : a;
    })
                            : sqrt(device::sum_sq(r, t.d));
    t.out[i] = static_cast<float>(v);
    if (!(v - v == 0.0)) note_bad(bad, g);  // a finite row has a finite norm (sums in double)
}

/// Row i scaled to unit length as the CPU's normalize_rows does (zero rows stay zero).
__global__ void unit_rows_kernel(const float* x, int64_t n, int64_t d, float* out, double* sq,
                                 unsigned long long* bad) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    const float* r = x + i * d;
    const double nrm = sqrt(device::sum_sq(r, d));
    if (!(nrm - nrm == 0.0)) note_bad(bad, i);
    if (sq != nullptr) sq[i] = nrm * nrm;
    if (out == nullptr) return;
    const float inv = nrm > 0.0 ? static_cast<float>(1.0 / nrm) : 0.0f;
    for (int64_t t = 0; t < d; ++t) out[i * d + t] = r[t] * inv;
}

/// FPGM: out[i] = sum over j != i of sqrt(max(0, |xi|^2 + |xj|^2 - 2 <xi, xj>)), in double.
__global__ void fpgm_kernel(const float* gram, const double* sq, int64_t n, float* out) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    double acc = 0.0;
    for (int64_t j = 0; j < n; ++j) {
        if (j == i) continue;
        // entry (j, i): the same bits as (i, j) (written mirrored), read coalesced
        const double d2 = sq[i] + sq[j] - 2.0 * static_cast<double>(gram[j * n + i]);
        acc += d2 > 0.0 ? sqrt(d2) : 0.0;
    }
    out[i] = static_cast<float>(acc);
}

void check_matrix(const DeviceMatrix& x, const char* what) {
    PYPRUNE_CHECK(x.rows >= 1 && x.cols >= 1, what, ": empty matrix (", x.rows, " x ", x.cols, ")");
}

ProductTask gram_task(const float* x, int64_t n, int64_t d, float* out) {
    ProductTask t;
    t.a = t.b = x;
    t.m = t.n = n;
    t.d = d;
    t.out = out;
    t.sym = 1;
    return t;
}

/// The row of the first non-finite value the kernels noted in `bad` (device, set to
/// 0x7f... bytes first), or -1 after the stream's work is done.
int64_t first_bad(const unsigned long long* bad, cudaStream_t stream) {
    unsigned long long v = 0;
    PYPRUNE_CUDA(cudaMemcpyAsync(&v, bad, sizeof(v), cudaMemcpyDeviceToHost, stream));
    PYPRUNE_CUDA(cudaStreamSynchronize(stream));
    return v < 0x7f7f7f7f7f7f7f7full ? static_cast<int64_t>(v) : -1;
}

/// The CPU's error for row i of x (device memory), which holds a non-finite value.
[[noreturn]] void raise_bad_row(const DeviceMatrix& x, int64_t i, const std::string& what) {
    std::vector<float> row(static_cast<size_t>(x.cols));
    PYPRUNE_CUDA(cudaMemcpy(row.data(), x.data + i * x.cols, sizeof(float) * row.size(), cudaMemcpyDeviceToHost));
    raise_non_finite(row.data(), x.cols, i, what);
}

unsigned blocks_for(int64_t count, int per) { return static_cast<unsigned>((count + per - 1) / per); }

}  // namespace

void filter_norms(const std::vector<DeviceMatrix>& xs, int p, const std::vector<float*>& outs, int device,
                  uintptr_t stream_bits) {
    PYPRUNE_CHECK(p == 1 || p == 2, "p must be 1 or 2, got ", p);
    PYPRUNE_CHECK(xs.size() == outs.size(), "one output per layer");
    if (xs.empty()) return;
    for (const auto& x : xs) check_matrix(x, "weights");
    DeviceGuard guard(device);
    cudaStream_t stream = as_stream(stream_bits);
    std::vector<NormTask> tasks;
    std::vector<int64_t> first;
    int64_t total = 0;
    for (size_t l = 0; l < xs.size(); ++l) {
        tasks.push_back(NormTask{xs[l].data, outs[l], xs[l].rows, xs[l].cols});
        first.push_back(total);
        total += xs[l].rows;
    }
    const size_t tasks_bytes = (sizeof(NormTask) * tasks.size() + 255) / 256 * 256;
    const size_t first_bytes = (sizeof(int64_t) * first.size() + 255) / 256 * 256;
    DeviceBuffer buf(tasks_bytes + first_bytes + sizeof(unsigned long long), stream);
    auto* dt = buf.as<NormTask>();
    auto* df = reinterpret_cast<int64_t*>(buf.as<char>() + tasks_bytes);
    auto* bad = reinterpret_cast<unsigned long long*>(buf.as<char>() + tasks_bytes + first_bytes);
    PYPRUNE_CUDA(cudaMemsetAsync(bad, 0x7f, sizeof(*bad), stream));
    PYPRUNE_CUDA(cudaMemcpyAsync(dt, tasks.data(), sizeof(NormTask) * tasks.size(), cudaMemcpyHostToDevice, stream));
    PYPRUNE_CUDA(cudaMemcpyAsync(df, first.data(), sizeof(int64_t) * first.size(), cudaMemcpyHostToDevice, stream));
    norms_kernel<<<blocks_for(total, 128), 128, 0, stream>>>(dt, df, static_cast<int>(tasks.size()), total, p, bad);
    PYPRUNE_CUDA(cudaGetLastError());
    const int64_t g = first_bad(bad, stream);
    if (g >= 0) {  // the layers are consecutive in g: the lowest is the first bad layer's
        size_t l = 0;
        while (l + 1 < first.size() && first[l + 1] <= g) ++l;
        raise_bad_row(xs[l], g - first[l], "weights[" + std::to_string(l) + "]");
    }
}

void cosine_similarity(const DeviceMatrix& x, float* out, int device, uintptr_t stream_bits) {
    check_matrix(x, "weight");
    DeviceGuard guard(device);
    cudaStream_t stream = as_stream(stream_bits);
    const int64_t n = x.rows, d = x.cols;
    const size_t xn_bytes = (sizeof(float) * n * d + 255) / 256 * 256;
    DeviceBuffer buf(xn_bytes + sizeof(unsigned long long) + 256 + product_scratch(1), stream);
    float* xn = buf.as<float>();
    auto* bad = reinterpret_cast<unsigned long long*>(buf.as<char>() + xn_bytes);
    PYPRUNE_CUDA(cudaMemsetAsync(bad, 0x7f, sizeof(*bad), stream));
    unit_rows_kernel<<<blocks_for(n, 128), 128, 0, stream>>>(x.data, n, d, xn, nullptr, bad);
    PYPRUNE_CUDA(cudaGetLastError());
    const int64_t i = first_bad(bad, stream);
    if (i >= 0) raise_bad_row(x, i, "weight");
    run_products(upload_products({gram_task(xn, n, d, out)}, stream, buf.as<char>() + xn_bytes + 256), stream);
    PYPRUNE_CUDA(cudaStreamSynchronize(stream));
}

void fpgm_scores(const DeviceMatrix& x, float* out, int device, uintptr_t stream_bits) {
    check_matrix(x, "weight");
    DeviceGuard guard(device);
    cudaStream_t stream = as_stream(stream_bits);
    const int64_t n = x.rows, d = x.cols;
    const size_t gram_bytes = (sizeof(float) * n * n + 255) / 256 * 256, sq_bytes = (sizeof(double) * n + 255) / 256 * 256;
    DeviceBuffer buf(gram_bytes + sq_bytes + 256 + product_scratch(1), stream);
    char* base = buf.as<char>();
    auto* gram = reinterpret_cast<float*>(base);
    auto* sq = reinterpret_cast<double*>(base + gram_bytes);
    auto* bad = reinterpret_cast<unsigned long long*>(base + gram_bytes + sq_bytes);
    PYPRUNE_CUDA(cudaMemsetAsync(bad, 0x7f, sizeof(*bad), stream));
    unit_rows_kernel<<<blocks_for(n, 128), 128, 0, stream>>>(x.data, n, d, nullptr, sq, bad);
    PYPRUNE_CUDA(cudaGetLastError());
    const int64_t i = first_bad(bad, stream);
    if (i >= 0) raise_bad_row(x, i, "weight");
    run_products(upload_products({gram_task(x.data, n, d, gram)}, stream, base + gram_bytes + sq_bytes + 256), stream);
    fpgm_kernel<<<blocks_for(n, 128), 128, 0, stream>>>(gram, sq, n, out);
    PYPRUNE_CUDA(cudaGetLastError());
    PYPRUNE_CUDA(cudaStreamSynchronize(stream));
}

}  // namespace pyprune::cuda
