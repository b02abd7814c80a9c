// pyprune._core: the C++ core of pyprune. Argument checking and conversion live here;
// the algorithms live in csrc/core and know nothing of Python.
#include <omp.h>

#include <pybind11/pybind11.h>

#include "../core/blas.h"

namespace pyprune::bind {
namespace py = pybind11;
void register_similarity(py::module_& m);
void register_kmeans(py::module_& m);
void register_choose_k(py::module_& m);
void register_gemm(py::module_& m);
void register_slice(py::module_& m);
void register_ridge(py::module_& m);
#ifdef PYPRUNE_WITH_CUDA
void register_cuda(py::module_& m);
#endif
}  // namespace pyprune::bind

PYBIND11_MODULE(_core, m) {
    m.doc() = "pyprune's C++ core: filter norms, similarity, spherical k-means, structured slicing.";
    pyprune::blas::pin_single_thread();
    pyprune::bind::register_similarity(m);
    pyprune::bind::register_kmeans(m);
    pyprune::bind::register_choose_k(m);
    pyprune::bind::register_gemm(m);
    pyprune::bind::register_slice(m);
    pyprune::bind::register_ridge(m);
    m.def("num_procs", []() { return omp_get_num_procs(); }, "Number of cores OpenMP sees.");
#ifdef PYPRUNE_WITH_CUDA
    pyprune::bind::register_cuda(m);
    m.attr("cuda_available") = true;  // built with the CUDA kernels (cuda_device_count: is a GPU there)
#else
    m.attr("cuda_available") = false;
#endif
#ifdef PYPRUNE_VERSION
    m.attr("__version__") = PYPRUNE_VERSION;
#endif
}
