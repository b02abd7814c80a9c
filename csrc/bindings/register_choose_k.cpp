#include <vector>

#include "../core/choose_k.h"
#include "arrays.h"

namespace pyprune::bind {

void register_choose_k(py::module_& m) {
    m.def(
        "choose_k",
        [](const std::vector<py::array>& weights, const std::vector<std::vector<int64_t>>& ks,
           int max_iter, uint64_t seed, int threads, double min_depth) {
            const auto xs = as_matrices(weights, "weights");
            std::vector<std::vector<double>> curves;
            std::vector<int64_t> chosen;
            {
                py::gil_scoped_release nogil;
                chosen = choose_k(xs, ks, max_iter, seed, threads, min_depth, &curves);
            }
            return py::make_tuple(chosen, curves);
        },
        py::arg("weights"), py::arg("ks"), py::arg("max_iter") = 100, py::arg("seed") = 0,
        py::arg("threads") = 0, py::arg("min_depth") = 0.0,
        "Chosen K per layer by the knee of the distortion curve; returns (chosen, distortions).");

    m.def(
        "knee_point",
        [](const std::vector<double>& xs, const std::vector<double>& ys) {
            const Knee k = knee_point(xs, ys);
            return py::make_tuple(k.index, k.depth);
        },
        py::arg("xs"), py::arg("ys"),
        "(index, depth) of the knee of a decreasing curve (maximum distance below the chord).");
}

}  // namespace pyprune::bind
