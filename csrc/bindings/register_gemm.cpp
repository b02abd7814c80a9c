#include <string>
#include <vector>

#include "../core/gemm.h"
#include "arrays.h"

namespace pyprune::bind {

namespace {

/// `kernel` when given, else the run-time choice when `packed`, else the BLAS.
GemmKernel kernel_of(bool packed, const std::string& kernel) {
    if (!kernel.empty()) return parse_kernel(kernel);
    if (!packed) return GemmKernel::blas;
    const GemmKernel k = default_kernel();
    PYPRUNE_CHECK(k != GemmKernel::blas, "packed=True: the packed kernel is off (PYPRUNE_GEMM=blas)");
    return k;
}

}  // namespace

void register_gemm(py::module_& m) {
    m.def(
        "time_gemm",
        [](int64_t size, int threads, int repeats, bool packed, const std::string& kernel) {
            const GemmKernel k = kernel_of(packed, kernel);
            py::gil_scoped_release nogil;
            return time_gemm(size, threads, repeats, k);
        },
        py::arg("size") = 2048, py::arg("threads") = 0, py::arg("repeats") = 3, py::arg("packed") = false,
        py::arg("kernel") = "",
        "Best-of-`repeats` seconds of one size^3 sgemm, rows split over `threads` one-thread GEMMs. "
        "`kernel` names the path (blas, portable, avx2, avx512); without it `packed` picks the "
        "run-time choice of packed kernel, else the BLAS.");

    m.def("packed_gemm_available", &packed_gemm_available,
          "True when the k-means products run on one of the core's packed kernels (not PYPRUNE_GEMM=blas).");

    m.def(
        "gemm_kernel", []() { return std::string(kernel_name(default_kernel())); },
        "The path the k-means products take: PYPRUNE_GEMM when set, else the fastest this CPU runs.");

    m.def(
        "gemm_kernels",
        []() {
            std::vector<std::string> out;
            for (GemmKernel k : supported_kernels()) out.emplace_back(kernel_name(k));
            return out;
        },
        "The paths this CPU runs, fastest first (blas last).");

    m.def(
        "products",
        [](const py::array& a, const py::array& b, bool packed, int threads, const std::string& kernel) {
            const auto av = as_matrix(a, "a");
            const auto bv = as_matrix(b, "b");
            const GemmKernel k = kernel_of(packed, kernel);
            std::vector<float> out;
            {
                py::gil_scoped_release nogil;
                out = products(av, bv, k, threads);
            }
            py::array_t<float> res({av.rows, bv.rows});
            std::memcpy(res.mutable_data(), out.data(), out.size() * sizeof(float));
            return res;
        },
        py::arg("a"), py::arg("b"), py::arg("packed") = false, py::arg("threads") = 0, py::arg("kernel") = "",
        "a @ b.T through the BLAS or a packed kernel (`kernel` names one; else `packed`).");
}

}  // namespace pyprune::bind
