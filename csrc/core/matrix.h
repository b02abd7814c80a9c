// A read-only row-major float matrix view: how the filters of one layer reach the kernels
// (norms, similarity, k-means). The gather (slice.h) takes arrays of any dtype instead.
#pragma once

#include <cstdint>
#include <string>

namespace pyprune {

/// Rows are filters (output channels), columns the flattened filter weights.
struct MatrixView {
    const float* data = nullptr;  ///< row-major, rows * cols floats, caller-owned
    int64_t rows = 0;             ///< number of filters n
    int64_t cols = 0;             ///< filter length d
};

/// Check a view's shape: non-null data, n >= 1, d >= 1. `what` names it in errors.
void check_shape(const MatrixView& x, const char* what);

/// check_shape, and every value finite. `what` names it in errors.
void validate(const MatrixView& x, const char* what);

/// The error for filter i (`row`, d values), which holds a non-finite value: "<what>:
/// contains a non-finite value (v) at filter i, element j" for its first one. Every check
/// of the values (validate, the k-means's, the CUDA kernels') raises it.
[[noreturn]] void raise_non_finite(const float* row, int64_t d, int64_t i, const std::string& what);

/// Number of OpenMP threads to use: `requested` when > 0, else every core.
int resolve_threads(int requested);

}  // namespace pyprune
