#include "reduce.h"

#ifdef __FAST_MATH__
#error "reduce.cpp promises the same bits on every CPU: build it without -ffast-math/-Ofast"
#endif

namespace pyprune {

namespace {

constexpr int64_t kLanes = 16;

/// sum_t term(t) for t < d: term(t) into lane t mod 16, the lanes then summed pairwise
/// (((0+8)+(4+12))+((2+10)+(6+14)))+..., the same order on every build. Inlined into each
/// build of its caller, so it is vectorised for that build's instruction set.
template <class Term>
inline __attribute__((always_inline)) double lane_sum(int64_t d, Term term) {
    double acc[kLanes] = {};
    int64_t t = 0;
    for (; t + kLanes <= d; t += kLanes) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) acc[l] += term(t + l);
    }
    for (int64_t l = 0; t + l < d; ++l) acc[l] += term(t + l);
    for (int64_t w = kLanes / 2; w >= 1; w /= 2)
        for (int64_t l = 0; l < w; ++l) acc[l] += acc[l + w];
    return acc[0];
}

}  // namespace

PYPRUNE_CLONES double dot_double(const float* a, const float* b, int64_t d) {
    return lane_sum(d, [=](int64_t t) { return static_cast<double>(a[t]) * static_cast<double>(b[t]); });
}

PYPRUNE_CLONES double sum_sq(const float* a, int64_t d) {
    return lane_sum(d, [=](int64_t t) {
        const double v = a[t];
        return v * v;
    });
}

PYPRUNE_CLONES double sum_abs(const float* a, int64_t d) {
    return lane_sum(d, [=](int64_t t) {
        const double v = a[t];
        return v < 0.0 ? -v : v;
    });
}

PYPRUNE_CLONES double residual_sq(const float* a, const float* b, double f, int64_t d) {
    return lane_sum(d, [=](int64_t t) {
        const double e = static_cast<double>(a[t]) - f * static_cast<double>(b[t]);
        return e * e;
    });
}

PYPRUNE_CLONES void scale_row(const float* a, float s, int64_t d, float* out) {
#pragma omp simd
    for (int64_t t = 0; t < d; ++t) out[t] = a[t] * s;
}

PYPRUNE_CLONES void widen_row(const float* r, int64_t d, double* a) {
#pragma omp simd
    for (int64_t t = 0; t < d; ++t) a[t] = r[t];
}

PYPRUNE_CLONES void add_row(const float* r, int64_t d, double* a) {
#pragma omp simd
    for (int64_t t = 0; t < d; ++t) a[t] += r[t];
}

PYPRUNE_CLONES void move_row(const float* r, int64_t d, double* from, double* to) {
#pragma omp simd
    for (int64_t t = 0; t < d; ++t) {
        from[t] -= r[t];
        to[t] += r[t];
    }
}

PYPRUNE_CLONES bool narrow_row(const double* a, double s, int64_t d, float* c) {
    int differs = 0;
#pragma omp simd reduction(| : differs)
    for (int64_t t = 0; t < d; ++t) {
        const float v = static_cast<float>(a[t] * s);
        differs |= v != c[t];
        c[t] = v;
    }
    return differs != 0;
}

}  // namespace pyprune
