#include <optional>
#include <vector>

#include "../core/gemm.h"
#include "../core/kmeans.h"
#include "arrays.h"

namespace pyprune::bind {

namespace {

py::tuple result_to_python(const KMeansResult& r) {
    py::array_t<float> centroids({r.k, r.d});
    if (!r.centroids.empty())
        std::memcpy(centroids.mutable_data(), r.centroids.data(), r.centroids.size() * sizeof(float));
    return py::make_tuple(centroids, to_numpy(r.labels), to_numpy(r.representatives),
                          to_numpy(r.objective), r.n_iter);
}

}  // namespace

void register_kmeans(py::module_& m) {
    m.def(
        "spherical_kmeans",
        [](const std::vector<py::array>& weights, const std::vector<int64_t>& ks, int max_iter,
           bool early_stop, uint64_t seed, int threads,
           const std::optional<std::vector<std::optional<py::array>>>& inits, bool reuse) {
            const auto xs = as_matrices(weights, "weights");
            PYPRUNE_CHECK(ks.size() == xs.size(), "ks: one K per layer: ", xs.size(), " layers, ",
                          ks.size(), " values of K");
            std::vector<KMeansParams> params(xs.size());
            for (size_t l = 0; l < xs.size(); ++l) {
                params[l].k = ks[l];
                params[l].max_iter = max_iter;
                params[l].early_stop = early_stop;
                params[l].seed = seed;
                params[l].reuse = reuse;
            }
            std::vector<const float*> init_ptrs;
            if (inits) {
                PYPRUNE_CHECK(inits->size() == xs.size(), "init: one entry per layer: ", xs.size(),
                              " layers, ", inits->size(), " entries");
                for (size_t l = 0; l < xs.size(); ++l) {
                    const auto& a = (*inits)[l];
                    if (!a) {
                        init_ptrs.push_back(nullptr);
                        continue;
                    }
                    const auto c = as_matrix(*a, "init[" + std::to_string(l) + "]");
                    PYPRUNE_CHECK(c.rows == ks[l] && c.cols == xs[l].cols, "init[", l,
                                  "]: expected shape (", ks[l], ", ", xs[l].cols, "), got (", c.rows,
                                  ", ", c.cols, ")");
                    init_ptrs.push_back(c.data);
                }
            }
            std::vector<KMeansResult> results;
            {
                py::gil_scoped_release nogil;
                results = spherical_kmeans_batch(xs, params, init_ptrs, threads);
            }
            py::list out;
            for (const auto& r : results) out.append(result_to_python(r));
            return out;
        },
        py::arg("weights"), py::arg("ks"), py::arg("max_iter") = 100, py::arg("early_stop") = true,
        py::arg("seed") = 0, py::arg("threads") = 0, py::arg("inits") = py::none(),
        py::arg("reuse") = true,
        "Spherical k-means of many layers in one call. Returns one tuple per layer: "
        "(centroids, labels, representatives, objective, n_iter).");

    m.def(
        "choose_k",
        [](const std::vector<py::array>& weights, const std::vector<std::vector<int64_t>>& ks,
           int max_iter, uint64_t seed, int threads) {
            const auto xs = as_matrices(weights, "weights");
            std::vector<std::vector<double>> curves;
            std::vector<int64_t> chosen;
            {
                py::gil_scoped_release nogil;
                chosen = choose_k(xs, ks, max_iter, seed, threads, &curves);
            }
            return py::make_tuple(chosen, curves);
        },
        py::arg("weights"), py::arg("ks"), py::arg("max_iter") = 100, py::arg("seed") = 0,
        py::arg("threads") = 0,
        "Chosen K per layer by the knee of the distortion curve; returns (chosen, distortions).");

    m.def("knee_index", &knee_index, py::arg("xs"), py::arg("ys"),
          "Index of the knee of a decreasing curve (maximum distance below the chord).");

    m.def(
        "time_gemm",
        [](int64_t size, int threads, int repeats, bool packed) {
            py::gil_scoped_release nogil;
            return time_gemm(size, threads, repeats, packed);
        },
        py::arg("size") = 2048, py::arg("threads") = 0, py::arg("repeats") = 3, py::arg("packed") = false,
        "Best-of-`repeats` seconds of one size^3 sgemm, rows split over `threads` one-thread GEMMs "
        "(the BLAS, or the core's packed kernel).");

    m.def("packed_gemm_available", &packed_gemm_available,
          "True when the CPU runs the core's packed AVX-512 kernel (else the BLAS is used).");

    m.def(
        "products",
        [](const py::array& a, const py::array& b, bool packed, int threads) {
            const auto av = as_matrix(a, "a");
            const auto bv = as_matrix(b, "b");
            std::vector<float> out;
            {
                py::gil_scoped_release nogil;
                out = products(av, bv, packed, threads);
            }
            py::array_t<float> res({av.rows, bv.rows});
            std::memcpy(res.mutable_data(), out.data(), out.size() * sizeof(float));
            return res;
        },
        py::arg("a"), py::arg("b"), py::arg("packed"), py::arg("threads") = 0,
        "a @ b.T through the BLAS or the packed kernel.");
}

}  // namespace pyprune::bind
