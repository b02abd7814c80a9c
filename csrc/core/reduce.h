// Sums and element-wise steps over float rows in double: the dot products, squared norms
// and residuals of the k-means's per-filter statistics and of every filter normalisation,
// and the centroid sums of its update step.
//
// Each sum adds in 16 fixed lanes (entry t into lane t mod 16) and combines the lanes in a
// fixed order, and reduce.cpp is compiled without floating-point contraction, so a result
// is the same bits whatever vector width the compiler gives a group of lanes. On x86-64
// (GCC, glibc) each function is built for AVX-512, AVX2 and the SSE2 baseline and the
// loader picks the widest the CPU runs: the same numbers on every x86 CPU, computed in
// wider steps where it has them (passes over filters that are not in cache run at
// memory speed either way).
#pragma once

#include <cstddef>  // on glibc, defines __GLIBC__ (its loader resolves the clones: ifunc)
#include <cstdint>

// Build a function for AVX-512, AVX2 and the x86-64 baseline, resolved once when the library
// loads: GCC on x86-64 glibc. Elsewhere (Clang, other C libraries, other CPUs) one build.
// Only for functions whose results do not depend on the vector width (see above).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define PYPRUNE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PYPRUNE_CLONES
#endif

namespace pyprune {

/// sum_t a[t] b[t].
double dot_double(const float* a, const float* b, int64_t d);

/// sum_t a[t]^2.
double sum_sq(const float* a, int64_t d);

/// sum_t |a[t]|.
double sum_abs(const float* a, int64_t d);

/// |a - f b|^2 = sum_t (a[t] - f b[t])^2.
double residual_sq(const float* a, const float* b, double f, int64_t d);

/// out[t] = a[t] * s (float; out may be a).
void scale_row(const float* a, float s, int64_t d, float* out);

// Element-wise steps of the centroid sums (double): the same bits on any vector width.

/// a[t] = r[t].
void widen_row(const float* r, int64_t d, double* a);

/// a[t] += r[t].
void add_row(const float* r, int64_t d, double* a);

/// from[t] -= r[t], to[t] += r[t].
void move_row(const float* r, int64_t d, double* from, double* to);

/// c[t] = float(a[t] * s); returns whether any entry of c changed.
bool narrow_row(const double* a, double s, int64_t d, float* c);

}  // namespace pyprune
