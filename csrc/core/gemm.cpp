#include "gemm.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <limits>

#include "blas.h"
#include "check.h"
#include "gemm_kernels.h"

namespace pyprune {

namespace {

constexpr int64_t KC = 256;  // depth block: a panel block (KC x width) stays in L1/L2
constexpr int64_t MC = 128;  // rows of A per block: stays in L2

constexpr GemmKernel kAll[] = {GemmKernel::avx512, GemmKernel::avx2, GemmKernel::portable,
                               GemmKernel::blas};

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

std::string names(const std::vector<GemmKernel>& ks) {
    std::string out;
    for (GemmKernel k : ks) out += (out.empty() ? "" : ", ") + std::string(kernel_name(k));
    return out;
}

bool cpu_has(const char* feature) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const std::string f = feature;
    if (f == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (f == "avx512f") return __builtin_cpu_supports("avx512f");
#endif
    (void)feature;
    return false;
}

/// What the CPU lacks for `kernel`, for error messages.
const char* needs(GemmKernel kernel) {
    switch (kernel) {
        case GemmKernel::avx512: return "AVX-512F";
        case GemmKernel::avx2: return "AVX2 and FMA";
        default: return "nothing";
    }
}

/// The choice made once per process: a kernel, or the error to raise at every use.
struct Choice {
    GemmKernel kernel = GemmKernel::blas;
    std::string error;
};

Choice choose() {
    Choice c;
    const char* env = std::getenv("PYPRUNE_GEMM");
    if (env == nullptr || *env == '\0') {
        c.kernel = supported_kernels().front();
        return c;
    }
    const std::string v = lower(env);
    bool known = false;
    for (GemmKernel k : kAll) {
        if (v == kernel_name(k)) {
            known = true;
            c.kernel = k;
        }
    }
    if (!known) {
        c.error = "PYPRUNE_GEMM='" + std::string(env) +
                  "' is not a GEMM path: set it to one of avx512, avx2, portable, blas, or unset it "
                  "to choose by CPU (this CPU runs: " + names(supported_kernels()) + ")";
    } else if (!kernel_supported(c.kernel)) {
        c.error = "PYPRUNE_GEMM=" + v + " asks for a path this CPU cannot run (it has no " +
                  needs(c.kernel) + "); this CPU runs: " + names(supported_kernels());
    }
    return c;
}

}  // namespace

const char* kernel_name(GemmKernel kernel) {
    switch (kernel) {
        case GemmKernel::blas: return "blas";
        case GemmKernel::portable: return "portable";
        case GemmKernel::avx2: return "avx2";
        case GemmKernel::avx512: return "avx512";
    }
    return "?";
}

GemmKernel parse_kernel(const std::string& name) {
    const std::string v = lower(name);
    for (GemmKernel k : kAll)
        if (v == kernel_name(k)) return k;
    PYPRUNE_CHECK(false, "unknown GEMM kernel '", name, "': expected one of avx512, avx2, portable, blas");
    return GemmKernel::blas;
}

bool kernel_supported(GemmKernel kernel) {
    switch (kernel) {
        case GemmKernel::blas:
        case GemmKernel::portable: return true;
        case GemmKernel::avx2: return kernels::x86_kernels_built() && cpu_has("avx2");
        case GemmKernel::avx512: return kernels::x86_kernels_built() && cpu_has("avx512f");
    }
    return false;
}

void check_kernel(GemmKernel kernel) {
    PYPRUNE_CHECK(kernel_supported(kernel), "GEMM kernel '", kernel_name(kernel), "' needs ",
                  needs(kernel), ", which this CPU does not have; it runs: ", names(supported_kernels()));
}

std::vector<GemmKernel> supported_kernels() {
    std::vector<GemmKernel> out;
    for (GemmKernel k : kAll)
        if (kernel_supported(k)) out.push_back(k);
    return out;
}

GemmKernel default_kernel() {
    static const Choice choice = choose();
    PYPRUNE_CHECK(choice.error.empty(), choice.error);
    return choice.kernel;
}

bool packed_gemm_available() { return default_kernel() != GemmKernel::blas; }

int64_t panel_width(GemmKernel kernel) {
    switch (kernel) {
        case GemmKernel::avx512: return kernels::kAvx512Width;
        case GemmKernel::avx2: return kernels::kAvx2Width;
        case GemmKernel::portable: return kernels::kPortableWidth;
        case GemmKernel::blas: return 1;
    }
    return 1;
}

PackedRows pack_rows(const float* x, int64_t rows, int64_t cols, int64_t ld, GemmKernel kernel) {
    PackedRows p;
    pack_rows(x, rows, cols, ld, kernel, &p);
    return p;
}

void prepare_packed(int64_t rows, int64_t cols, GemmKernel kernel, PackedRows* out) {
    PYPRUNE_CHECK(kernel != GemmKernel::blas, "pack_rows: the BLAS path packs nothing");
    check_kernel(kernel);
    PackedRows& p = *out;
    p.kernel = kernel;
    p.panel = panel_width(kernel);
    p.rows = rows;
    p.cols = cols;
    const int64_t panels = (rows + p.panel - 1) / p.panel;
    const size_t size = static_cast<size_t>(panels * cols * p.panel);
    if (p.data.capacity() < size) p.data.clear();  // every entry is written by pack_panel: never copy old ones
    p.data.resize(size);
}

void pack_panel(const float* x, int64_t ld, int64_t q, PackedRows* out) {
    PackedRows& p = *out;
    const int64_t w = p.panel, rows = p.rows, cols = p.cols;
    // Every panel width is a multiple of 8: rows are packed 8 at a time. On the x86 kernels'
    // paths (the CPU has AVX2) 8 whole rows go through 8 x 8 blocks transposed in registers
    // (2.5x as fast as the tiles below: densenet201's filters pack in 4.3 ms instead of 10.8
    // at one thread). The other rows that exist go through 8 x 32 tiles held in L1, each
    // read as 8 row pieces of 32 contiguous floats and written as 32 pieces of 8 contiguous
    // floats (rows past the end as zeros); the 8-row blocks past the end are zeros.
    constexpr int64_t kRows = 8, kCols = 32;
    static_assert(kernels::kAvx512Width % kRows == 0 && kernels::kAvx2Width % kRows == 0 &&
                      kernels::kPortableWidth % kRows == 0,
                  "panel widths are multiples of the tile's rows");
    static const bool avx2 = kernel_supported(GemmKernel::avx2);
    const bool x86 = avx2 && (p.kernel == GemmKernel::avx512 || p.kernel == GemmKernel::avx2);
    const int64_t real = std::clamp<int64_t>(rows - q * w, 0, w);       // rows of this panel that exist
    const int64_t whole = x86 ? real / kRows * kRows : 0;                 // through the registers
    const int64_t tiled = (real + kRows - 1) / kRows * kRows;            // then through the tiles
    float* dst = p.data.data() + q * cols * w;
    for (int64_t j0 = 0; j0 < whole; j0 += kRows)
        kernels::transpose8_avx2(x + (q * w + j0) * ld, ld, cols, dst + j0, w);
    if (whole < tiled) {
        float tile[kRows][kCols];
        for (int64_t t0 = 0; t0 < cols; t0 += kCols) {
            const int64_t tn = std::min(kCols, cols - t0);
            for (int64_t j0 = whole; j0 < tiled; j0 += kRows) {
                for (int64_t j = 0; j < kRows; ++j) {
                    if (j0 + j < real) {
                        const float* src = x + (q * w + j0 + j) * ld + t0;
                        for (int64_t t = 0; t < tn; ++t) tile[j][t] = src[t];
                    } else {
                        for (int64_t t = 0; t < tn; ++t) tile[j][t] = 0.0f;
                    }
                }
                for (int64_t t = 0; t < tn; ++t) {
                    float* o = dst + (t0 + t) * w + j0;
                    for (int64_t j = 0; j < kRows; ++j) o[j] = tile[j][t];
                }
            }
        }
    }
    if (tiled < w)
        for (int64_t t = 0; t < cols; ++t) std::fill(dst + t * w + tiled, dst + (t + 1) * w, 0.0f);
}

void pack_rows(const float* x, int64_t rows, int64_t cols, int64_t ld, GemmKernel kernel, PackedRows* out,
               int threads) {
    prepare_packed(rows, cols, kernel, out);
    const int64_t panels = (rows + out->panel - 1) / out->panel;
    const int nt = resolve_threads(threads);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && panels > 1 && rows * cols > 65536)
    for (int64_t q = 0; q < panels; ++q) pack_panel(x, ld, q, out);
}

int64_t split_rows(int64_t n, int parts, int t, int64_t grain) {
    if (grain <= 1) return n * t / parts;
    const int64_t count = (n + grain - 1) / grain;
    return std::min(n, grain * (count * t / parts));
}

void gemm_rows(int64_t m, const float* a, int64_t lda, const float* b, const PackedRows* packed,
               int64_t cols, int64_t lo, int64_t hi, float* out, int64_t ldo) {
    if (packed != nullptr) {
        gemm_packed(m, a, lda, *packed, lo, hi, out, ldo);
    } else {
        blas::gemm_nt(m, hi - lo, cols, a, lda, b + lo * cols, cols, out, ldo);
    }
}

void gemm_packed(int64_t m, const float* a, int64_t lda, const PackedRows& b, int64_t lo, int64_t hi,
                 float* out, int64_t ldo) {
    const int64_t w = b.panel;
    PYPRUNE_CHECK(w >= 1 && lo % w == 0 && lo >= 0 && hi <= b.rows && lo <= hi,
                  "gemm_packed: bad row range ", lo, "..", hi, " of ", b.rows, " (panels of ", w, ")");
    if (m == 0 || hi == lo) return;
    // b.kernel was checked against the CPU when b was packed.
    const kernels::PanelFn fn = b.kernel == GemmKernel::avx512 ? kernels::avx512
                                : b.kernel == GemmKernel::avx2 ? kernels::avx2
                                                               : kernels::portable;
    const int64_t d = b.cols;
    for (int64_t mb = 0; mb < m; mb += MC) {
        const int64_t mc = std::min(MC, m - mb);
        for (int64_t kb = 0; kb < d; kb += KC) {
            const int64_t kc = std::min(KC, d - kb);
            for (int64_t q = lo / w; q * w < hi; ++q) {
                const float* panel = b.data.data() + q * d * w + kb * w;
                const int64_t ncols = std::min(w, hi - q * w);
                fn(mc, a + mb * lda + kb, lda, panel, kc, out + mb * ldo + (q * w - lo), ldo, ncols, kb > 0);
            }
        }
    }
}

void gemm_packed_upper(const float* a, int64_t lda, const PackedRows& b, int64_t q0, int64_t q1, float* out,
                       int64_t ldo) {
    const int64_t w = b.panel, d = b.cols, n = b.rows;
    PYPRUNE_CHECK(w >= 1 && q0 >= 0 && q0 <= q1 && q1 * w < n + w, "gemm_packed_upper: bad panels ", q0, "..",
                  q1, " of ", n, " rows (panels of ", w, ")");
    if (q0 == q1) return;
    const kernels::PanelFn fn = b.kernel == GemmKernel::avx512 ? kernels::avx512
                                : b.kernel == GemmKernel::avx2 ? kernels::avx2
                                                               : kernels::portable;
    // As gemm_packed panel by panel (the same blocks of depth, so the same bits), but each
    // block of A is multiplied with every panel of the range while it is in cache.
    const int64_t m = std::min(n, q1 * w);
    for (int64_t mb = 0; mb < m; mb += MC) {
        for (int64_t kb = 0; kb < d; kb += KC) {
            const int64_t kc = std::min(KC, d - kb);
            for (int64_t q = q0; q < q1; ++q) {
                const int64_t rows = std::min(n, q * w + w);  // panel q needs rows 0..rows
                if (mb >= rows) continue;
                fn(std::min(MC, rows - mb), a + mb * lda + kb, lda, b.data.data() + q * d * w + kb * w, kc,
                   out + mb * ldo + q * w, ldo, std::min(w, n - q * w), kb > 0);
            }
        }
    }
}

double time_gemm(int64_t size, int threads, int repeats, GemmKernel kernel) {
    PYPRUNE_CHECK(size >= 1 && repeats >= 1, "time_gemm: size and repeats must be >= 1");
    check_kernel(kernel);
    const int nt = resolve_threads(threads);
    const size_t m = static_cast<size_t>(size * size);
    std::vector<float> a(m), b(m), c(m);
    uint64_t state = 1;
    auto next = [&state]() {  // any fixed values in [-0.5, 0.5) will do
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<float>(static_cast<double>(state >> 40) / 16777216.0 - 0.5);
    };
    for (size_t i = 0; i < m; ++i) {
        a[i] = next();
        b[i] = next();
    }
    const bool packed = kernel != GemmKernel::blas;
    const PackedRows bp = packed ? pack_rows(b.data(), size, size, size, kernel) : PackedRows{};
    auto once = [&]() {
        parallel_rows(size, nt, 1, [&](int, int64_t lo, int64_t hi) {
            gemm_rows(hi - lo, a.data() + lo * size, size, b.data(), packed ? &bp : nullptr, size, 0, size,
                      c.data() + lo * size, size);
        });
    };
    once();
    double best = std::numeric_limits<double>::infinity();
    for (int r = 0; r < repeats; ++r) {
        const double t0 = omp_get_wtime();
        once();
        best = std::min(best, omp_get_wtime() - t0);
    }
    return best;
}

std::vector<float> products(const MatrixView& a, const MatrixView& b, GemmKernel kernel, int threads) {
    validate(a, "a");
    validate(b, "b");
    PYPRUNE_CHECK(a.cols == b.cols, "products: a has ", a.cols, " columns and b ", b.cols);
    check_kernel(kernel);
    const int nt = resolve_threads(threads);
    const int64_t m = a.rows, n = b.rows, d = a.cols;
    std::vector<float> out(static_cast<size_t>(m * n));
    const bool packed = kernel != GemmKernel::blas;
    const PackedRows bp = packed ? pack_rows(b.data, n, d, d, kernel) : PackedRows{};
    parallel_rows(n, nt, panel_width(kernel), [&](int, int64_t lo, int64_t hi) {
        gemm_rows(m, a.data, d, b.data, packed ? &bp : nullptr, d, lo, hi, out.data() + lo, n);
    });
    return out;
}

}  // namespace pyprune
