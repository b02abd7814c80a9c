// Array conversion shared by the register_*.cpp files: numpy <-> core views.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../core/check.h"
#include "../core/matrix.h"

namespace pyprune::bind {

namespace py = pybind11;

/// A float32, C-contiguous, 2-D array as a MatrixView (no copy). `what` names it in errors.
inline MatrixView as_matrix(const py::array& a, const std::string& what) {
    PYPRUNE_CHECK(a.dtype().is(py::dtype::of<float>()), what, ": expected float32, got ",
                  std::string(py::str(a.dtype())));
    PYPRUNE_CHECK(a.ndim() == 2, what, ": expected a 2-D (filters x weights) array, got rank ", a.ndim());
    PYPRUNE_CHECK((a.flags() & py::array::c_style) != 0, what, ": expected a C-contiguous array");
    return MatrixView{static_cast<const float*>(a.data()), static_cast<int64_t>(a.shape(0)),
                      static_cast<int64_t>(a.shape(1))};
}

inline std::vector<MatrixView> as_matrices(const std::vector<py::array>& arrays, const char* what) {
    std::vector<MatrixView> out;
    out.reserve(arrays.size());
    for (size_t i = 0; i < arrays.size(); ++i)
        out.push_back(as_matrix(arrays[i], std::string(what) + "[" + std::to_string(i) + "]"));
    return out;
}

/// Copy a std::vector into a new 1-D numpy array.
template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
    py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
    if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
    return out;
}

/// Hand a vector's storage to a new numpy array of the given shape without copying it:
/// the array owns the vector (through a capsule) from then on.
template <typename T, typename Alloc>
py::array_t<T> move_to_numpy(std::vector<T, Alloc>&& v, std::vector<py::ssize_t> shape) {
    using Vec = std::vector<T, Alloc>;
    auto owned = std::make_unique<Vec>(std::move(v));
    const T* data = owned->data();
    py::capsule owner(owned.get(), [](void* p) { delete static_cast<Vec*>(p); });
    owned.release();  // the capsule owns it now
    return py::array_t<T>(std::move(shape), data, owner);
}

}  // namespace pyprune::bind
