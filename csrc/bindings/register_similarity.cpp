#include <vector>

#include "../core/similarity.h"
#include "arrays.h"

namespace pyprune::bind {

void register_similarity(py::module_& m) {
    m.def(
        "filter_norms",
        [](const std::vector<py::array>& weights, int p, int threads) {
            const auto xs = as_matrices(weights, "weights");
            std::vector<py::array_t<float>> out;
            std::vector<float*> ptrs;
            for (const auto& x : xs) {
                out.emplace_back(static_cast<py::ssize_t>(x.rows));
                ptrs.push_back(out.back().mutable_data());
            }
            {
                py::gil_scoped_release nogil;
                filter_norms(xs, p, ptrs, threads);
            }
            return out;
        },
        py::arg("weights"), py::arg("p"), py::arg("threads") = 0,
        "Per-filter L1 (p=1) or L2 (p=2) norms of many (n, d) float32 arrays.");

    m.def(
        "cosine_similarity",
        [](const py::array& weight, int threads) {
            const auto x = as_matrix(weight, "weight");
            py::array_t<float> out({x.rows, x.rows});
            float* dst = out.mutable_data();
            {
                py::gil_scoped_release nogil;
                cosine_similarity(x, dst, threads);
            }
            return out;
        },
        py::arg("weight"), py::arg("threads") = 0, "Pairwise cosine similarity (n, n) of the rows.");

    m.def(
        "fpgm_scores",
        [](const py::array& weight, int threads) {
            const auto x = as_matrix(weight, "weight");
            py::array_t<float> out(static_cast<py::ssize_t>(x.rows));
            float* dst = out.mutable_data();
            {
                py::gil_scoped_release nogil;
                fpgm_scores(x, dst, threads);
            }
            return out;
        },
        py::arg("weight"), py::arg("threads") = 0,
        "Sum of Euclidean distances of each row to all others (geometric-median criterion).");
}

}  // namespace pyprune::bind
