// The register-blocked micro-kernels of the packed GEMM, one per instruction set.
//
// Internal to gemm.cpp. Each one multiplies rows of A (row-major, any leading dimension)
// by one packed panel of B: `width` rows of B stored column by column ([t][width]), so one
// depth step of the panel is `width` contiguous floats. The register tile is MR rows of A by
// the whole panel width, sized for the instruction set's register file:
//   avx512    8 x 48  (24 of 32 zmm accumulators)
//   avx2      6 x 16  (12 of 16 ymm accumulators, the BLIS Haswell shape)
//   portable  6 x 8 on x86-64 (built for the baseline, x86-64-v3 and v4: the loader picks),
//             6 x 16 where the compiler targets AVX, 5 x 16 for NEON (aarch64): plain C++
//             that GCC vectorises, no intrinsics
// The x86 kernels are compiled for their instruction set with target attributes, so the
// binary runs everywhere; gemm.cpp calls one only after checking the CPU.
#pragma once

#include <cstdint>

namespace pyprune::kernels {

/// out[0:m, 0:ncols] = A[0:m, 0:kc] * panel^T, or += when `acc`. `ncols` <= the panel
/// width: the remaining panel rows are zero padding and are not stored.
using PanelFn = void (*)(int64_t m, const float* a, int64_t lda, const float* panel, int64_t kc,
                         float* out, int64_t ldo, int64_t ncols, bool acc);

constexpr int64_t kAvx512Width = 48;
constexpr int64_t kAvx2Width = 16;
#if defined(__aarch64__)
constexpr int64_t kPortableWidth = 16;  // 32 NEON registers: 5 x 16 = 20 accumulators of 4 floats
constexpr int kPortableRows = 5;        // (6 rows need 24 + 4 + 6 > 32: two spill every step)
#elif defined(__AVX__)
constexpr int64_t kPortableWidth = 16;  // 16 ymm registers: 12 accumulators of 8 floats
constexpr int kPortableRows = 6;
#else
constexpr int64_t kPortableWidth = 8;  // 16 SSE registers: 12 accumulators of 4 floats
constexpr int kPortableRows = 6;
#endif

/// True when this build contains the x86 kernels (an x86-64 target built by GCC or Clang).
bool x86_kernels_built();

void avx512(int64_t m, const float* a, int64_t lda, const float* panel, int64_t kc, float* out,
            int64_t ldo, int64_t ncols, bool acc);
void avx2(int64_t m, const float* a, int64_t lda, const float* panel, int64_t kc, float* out,
          int64_t ldo, int64_t ncols, bool acc);
void portable(int64_t m, const float* a, int64_t lda, const float* panel, int64_t kc, float* out,
              int64_t ldo, int64_t ncols, bool acc);

/// out[t * ldo + i] = x[i * ld + t] for the 8 rows i < 8 and t < cols: 8 rows transposed
/// into 8-float pieces, through 8 x 8 blocks held in ymm registers (AVX2; the packing of
/// the x86 kernels' panels).
void transpose8_avx2(const float* x, int64_t ld, int64_t cols, float* out, int64_t ldo);

}  // namespace pyprune::kernels
