// The CUDA entry points (built with PYPRUNE_WITH_CUDA=ON only). Tensors cross as device
// pointers with their shapes, and the caller's stream as its handle: pyprune.engine takes
// them from torch tensors, which keep the memory alive during the call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>
#include <vector>

#include "../cuda/core_cuda.h"
#include "arrays.h"

namespace pyprune::bind {

namespace {

using Layer = std::tuple<uintptr_t, int64_t, int64_t>;  // (data pointer, rows, cols)

cuda::DeviceMatrix as_device(const Layer& l) {
    return cuda::DeviceMatrix{reinterpret_cast<const float*>(std::get<0>(l)), std::get<1>(l), std::get<2>(l)};
}

template <class T>
T* ptr(uintptr_t p) {
    return reinterpret_cast<T*>(p);
}

}  // namespace

void register_cuda(py::module_& m) {
    m.def("cuda_device_count", []() { return cuda::device_count(); }, "CUDA devices the runtime sees.");
    m.def(
        "spherical_kmeans_cuda",
        [](const std::vector<Layer>& layers, const std::vector<int64_t>& ks, int max_iter, bool early_stop,
           uint64_t seed, bool reuse, const std::vector<uintptr_t>& inits,
           const std::vector<std::vector<uintptr_t>>& outs, uintptr_t scratch, size_t scratch_bytes, int device,
           uintptr_t stream) {
            std::vector<cuda::DeviceMatrix> xs;
            for (const auto& l : layers) xs.push_back(as_device(l));
            std::vector<const float*> init_ptrs;
            for (uintptr_t p : inits) init_ptrs.push_back(ptr<const float>(p));
            std::vector<cuda::KMeansOutputs> o;
            for (const auto& v : outs) {
                PYPRUNE_CHECK(v.size() == 7, "spherical_kmeans_cuda: 7 output pointers per layer, got ", v.size());
                o.push_back(cuda::KMeansOutputs{ptr<float>(v[0]), ptr<int64_t>(v[1]), ptr<int64_t>(v[2]),
                                                ptr<float>(v[3]), ptr<float>(v[4]), ptr<float>(v[5]), ptr<float>(v[6])});
            }
            std::vector<cuda::KMeansSummary> res;
            {
                py::gil_scoped_release nogil;
                res = cuda::spherical_kmeans(xs, ks, max_iter, early_stop, seed, reuse, init_ptrs, o,
                                             reinterpret_cast<void*>(scratch), scratch_bytes, device, stream);
            }
            py::list out;
            for (const auto& s : res) {
                py::dict stats;
                stats["changed"] = to_numpy(s.changed);
                stats["moved"] = to_numpy(s.moved);
                stats["reseeded"] = to_numpy(s.reseeded);
                stats["recomputed"] = to_numpy(s.recomputed);
                out.append(py::make_tuple(s.n_iter, to_numpy(s.objective), stats));
            }
            return out;
        },
        py::arg("layers"), py::arg("ks"), py::arg("max_iter"), py::arg("early_stop"), py::arg("seed"),
        py::arg("reuse"), py::arg("inits"), py::arg("outs"), py::arg("scratch"), py::arg("scratch_bytes"),
        py::arg("device"), py::arg("stream"),
        "Spherical k-means of many layers on a CUDA device. layers: (pointer, n, d) of contiguous float32 "
        "matrices; inits: empty or one pointer per layer (0: k-means++); outs: per layer the pointers of "
        "centroids (K x d float32), labels (n int64), representatives (K int64), cosines, norms, rep_cosines, "
        "rep_residuals (n float32 each); scratch: device memory of spherical_kmeans_cuda_scratch "
        "bytes. Returns per layer (n_iter, objective, stats).");
    m.def(
        "spherical_kmeans_cuda_scratch",
        [](const std::vector<std::pair<int64_t, int64_t>>& shapes, const std::vector<int64_t>& ks, int max_iter,
           const std::vector<bool>& has_init) { return cuda::spherical_kmeans_scratch(shapes, ks, max_iter, has_init); },
        py::arg("shapes"), py::arg("ks"), py::arg("max_iter"), py::arg("has_init"),
        "Bytes of device scratch spherical_kmeans_cuda needs for layers of these (n, d), K and max_iter.");
    m.def(
        "filter_norms_cuda",
        [](const std::vector<Layer>& layers, int p, const std::vector<uintptr_t>& outs, int device, uintptr_t stream) {
            std::vector<cuda::DeviceMatrix> xs;
            for (const auto& l : layers) xs.push_back(as_device(l));
            std::vector<float*> o;
            for (uintptr_t q : outs) o.push_back(ptr<float>(q));
            py::gil_scoped_release nogil;
            cuda::filter_norms(xs, p, o, device, stream);
        },
        "Per-filter L1/L2 norms of many layers on a CUDA device.");
    m.def(
        "cosine_similarity_cuda",
        [](const Layer& x, uintptr_t out, int device, uintptr_t stream) {
            py::gil_scoped_release nogil;
            cuda::cosine_similarity(as_device(x), ptr<float>(out), device, stream);
        },
        "n x n cosine similarities on a CUDA device.");
    m.def(
        "fpgm_scores_cuda",
        [](const Layer& x, uintptr_t out, int device, uintptr_t stream) {
            py::gil_scoped_release nogil;
            cuda::fpgm_scores(as_device(x), ptr<float>(out), device, stream);
        },
        "FPGM scores on a CUDA device.");
}

}  // namespace pyprune::bind
