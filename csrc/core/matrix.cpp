#include "matrix.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "check.h"

namespace pyprune {

void check_shape(const MatrixView& x, const char* what) {
    PYPRUNE_CHECK(x.rows >= 1, what, ": needs at least one filter, got ", x.rows, " rows");
    PYPRUNE_CHECK(x.cols >= 1, what, ": filters must have at least one weight, got ", x.cols,
                  " columns");
    PYPRUNE_CHECK(x.data != nullptr, what, ": null data pointer");
}

void validate(const MatrixView& x, const char* what) {
    check_shape(x, what);
    const int64_t total = x.rows * x.cols;
    // A float is finite unless its exponent bits are all ones. This branch-free pass
    // vectorises (a loop that stops at the first bad value does not); only when it finds
    // one does a second pass look for where.
    uint32_t any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t i = 0; i < total; ++i) {
        uint32_t bits;
        std::memcpy(&bits, x.data + i, sizeof bits);
        any |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
    }
    for (int64_t i = 0; any != 0 && i < total; ++i) {
        if (!std::isfinite(x.data[i])) {
            const int64_t row = i / x.cols;
            raise_non_finite(x.data + row * x.cols, x.cols, row, what);
        }
    }
}

void raise_non_finite(const float* row, int64_t d, int64_t i, const std::string& what) {
    int64_t j = 0;
    while (j + 1 < d && std::isfinite(row[j])) ++j;
    detail::check_failed("std::isfinite(value)", __FILE__, __LINE__, what, ": contains a non-finite value (", row[j],
                         ") at filter ", i, ", element ", j);
}

int resolve_threads(int requested) {
    PYPRUNE_CHECK(requested >= 0, "threads must be >= 0 (0 or None = all cores), got ", requested);
    return requested > 0 ? requested : std::max(1, omp_get_num_procs());
}

}  // namespace pyprune
