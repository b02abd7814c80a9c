#include <vector>

#include "../core/ridge.h"
#include "arrays.h"

namespace pyprune::bind {

void register_ridge(py::module_& m) {
    m.def(
        "ridge_solve",
        [](const std::vector<py::array>& inputs, const std::vector<py::array>& targets, double lambda, int threads) {
            const auto as = as_matrices(inputs, "inputs");
            const auto bs = as_matrices(targets, "targets");
            RidgeParams p;
            p.lambda = lambda;
            std::vector<RidgeResult> res;
            {
                py::gil_scoped_release nogil;
                res = ridge_solve_batch(as, bs, p, threads);
            }
            py::list out;
            for (const auto& r : res) {
                py::array_t<float> w({r.m, r.d});
                std::memcpy(w.mutable_data(), r.w.data(), r.w.size() * sizeof(float));
                out.append(py::make_tuple(w, r.residual, r.lambda));
            }
            return out;
        },
        py::arg("inputs"), py::arg("targets"), py::arg("lambda_") = 1e-4, py::arg("threads") = 0,
        "Ridge least squares per layer, all in one call: for inputs A (rows x d) and targets B "
        "(rows x m), W (m x d) = argmin |A W^T - B|^2 + lambda * mean(diag(A^T A)) |W|^2, by Cholesky in "
        "double. Returns (W, relative residual, lambda used) per layer.");
}

}  // namespace pyprune::bind
