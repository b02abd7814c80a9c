// The spherical k-means of one layer as one CUDA thread block runs it, written once for two
// builds: nvcc compiles it into the solver kernel (kmeans_cuda.cu), and the host compiler
// compiles it with one "thread" (kmeans_emulation.cpp), so every machine can check it
// against the CPU solver (csrc/core/kmeans.cpp) without a GPU.
//
// It repeats the CPU solver's arithmetic operation for operation, so the labels,
// representatives and centroids are the same bits as the CPU's packed kernels give:
// - a filter-filter or centroid-filter dot is the packed kernels' chain: fused multiply-adds
//   in depth order, restarted every kKC entries and the blocks added in order (chain_dot);
// - the sums in double use reduce.cpp's 16 lanes and their fixed pairwise combination;
// - the k-means++ draws read a running sum added in filter order, candidates' potentials
//   in 8 interleaved lanes, as seed_potentials does;
// - Lloyd's similarities come from the Gram matrix (member rows summed in index order, in
//   double) exactly where the CPU solver takes them from there, and the member sums of the
//   update step are rebuilt or moved filter by filter as it does.
// Nothing here may be contracted into a fused multiply-add the CPU does not do: the CUDA
// build compiles with --fmad=false and the host build with -ffp-contract=off; the chains
// call fma explicitly.
//
// Block-parallel style: `for (i = PP_TID; i < n; i += PP_NT)` loops are the parallel steps,
// PP_SYNC() separates steps, `if (PP_TID == 0)` runs the serial parts. Shared control values
// live in Ctl (shared memory on the GPU).
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define PP_FN __device__ __forceinline__
#define PP_HD __host__ __device__ inline  // also called by the launching host code
#define PP_TID static_cast<int64_t>(threadIdx.x)
#define PP_NT static_cast<int64_t>(blockDim.x)
#define PP_SYNC() __syncthreads()
#define PP_FMAF(a, b, c) fmaf(a, b, c)
#define PP_SQRT(x) sqrt(x)
#else
#define PP_FN inline
#define PP_HD inline
#define PP_TID int64_t{0}
#define PP_NT int64_t{1}
#define PP_SYNC() ((void)0)
#define PP_FMAF(a, b, c) std::fma(a, b, c)
#define PP_SQRT(x) std::sqrt(x)
#endif

namespace pyprune::device {

/// Depth block of the packed CPU kernels (gemm.cpp's KC): a dot restarts its chain there.
constexpr int64_t kKC = 256;
/// Threads of the solver block (and the most the reductions hold).
constexpr int kBlock = 512;
/// The most k-means++ candidates per step: 2 + ln K < 48 for any K that fits in memory.
constexpr int kMaxTrials = 48;
/// Where a centroid's similarities are read (as Solver::src_): a filter index, or these.
constexpr int64_t kMean = -1, kComputed = -2;
/// The Gram matrix is kept for layers of at most this many filters (as kGramMaxRows).
constexpr int64_t kGramMaxRows = 5792;

/// One layer's clustering: inputs, outputs and scratch, all in device memory (host memory
/// in the emulation). Filled by the host code; the solver reads and writes through it.
struct Job {
    // inputs
    const float* x = nullptr;     ///< n x d filters as given
    const float* init = nullptr;  ///< K x d starting centroids, or null (k-means++)
    int64_t n = 0, d = 0, k = 0;
    int64_t trials = 0;           ///< k-means++ candidates per step: 2 + (int) ln K, from the host's log
    int use_gram = 0;             ///< the Gram matrix was computed into `gram` (xn xn^T)
    int max_iter = 0, early_stop = 1, reuse = 1;
    uint64_t seed = 0;
    // outputs
    float* c = nullptr;           ///< K x d centroids
    int64_t* labels = nullptr;    ///< n
    int64_t* reps = nullptr;      ///< K
    float* cosines = nullptr;     ///< n, each filter's cosine to its centroid
    float* norms = nullptr;       ///< n, written by the normalisation
    float* rep_cos = nullptr;     ///< n
    float* rep_res = nullptr;     ///< n
    double* objective = nullptr;  ///< max_iter + 1
    int64_t* stats = nullptr;     ///< 4 per iteration: changed, moved, reseeded, recomputed
    int64_t* info = nullptr;      ///< [0] iterations run, [1] first non-finite filter or -1
    // scratch
    float* xn = nullptr;          ///< n x d unit rows
    float* gram = nullptr;        ///< n x n, when use_gram
    float* s = nullptr;           ///< K x n similarities S^T
    float* best = nullptr;        ///< n
    float* dots = nullptr;        ///< kMaxTrials x n candidate dots (no Gram matrix), n for reps
    double* sum = nullptr;        ///< K x d member sums
    double* inv_norm = nullptr;   ///< K
    double* mind = nullptr;       ///< n
    double* prefix = nullptr;     ///< n
    int64_t* sum_label = nullptr; ///< n
    int64_t* mstart = nullptr;    ///< K + 1
    int64_t* morder = nullptr;    ///< n
    int64_t* pos = nullptr;       ///< K (group_by_label's cursor)
    int64_t* src = nullptr;       ///< K
    int64_t* list = nullptr;      ///< n (filters that change cluster)
    char* nonzero = nullptr;      ///< n
    char* used = nullptr;         ///< n
    char* moved = nullptr;        ///< K
    char* rowflag = nullptr;      ///< K: 0 keep, 1 from the Gram matrix, 2 multiplied out
    char* touched = nullptr;      ///< K
    char* empty = nullptr;        ///< K
    char* taken = nullptr;        ///< n
    int64_t* plist = nullptr;     ///< K: rows of S^T the products kernel recomputes (kState[kPm] of them)
    int64_t* state = nullptr;     ///< kStateSize values kept between the solver's kernels
};

/// Entries of Job::state: the solver's flags and counts that outlive one kernel.
enum StateField : int {
    kNonzero = 0,   ///< filters with a direction
    kGramReady,     ///< S^T rows can be read from the Gram matrix
    kAssigned,      ///< S^T holds an earlier assignment's rows
    kSumsBuilt,     ///< sum_label and the member lists describe a rebuild of the sums
    kSumsStored,    ///< ... and `sum` holds them
    kDone,          ///< no more iterations (early stop, or a non-finite value)
    kIters,         ///< iterations run
    kPm,            ///< rows in plist
    kRows,          ///< rows of S^T the coming assignment recomputes (both kinds)
    kStateSize
};

/// Values the block's threads share.
struct Ctl {
    double red_d[kBlock];
    int64_t red_i[kBlock];
    double out_d;
    int64_t out_i;
    double total;
    int64_t picks[kMaxTrials];
    int64_t m;
    int64_t best_t;
    int64_t count;  // filters in `list`
};

// --- sums with the CPU's rounding --------------------------------------------------------

/// reduce.cpp's lane_sum: term t into lane t mod 16, the lanes combined pairwise.
template <class Term>
PP_FN double lane_sum16(int64_t d, Term term) {
    double acc[16];
    for (int l = 0; l < 16; ++l) acc[l] = 0.0;
    int64_t t = 0;
    for (; t + 16 <= d; t += 16)
        for (int l = 0; l < 16; ++l) acc[l] += term(t + l);
    for (int l = 0; t + l < d; ++l) acc[l] += term(t + l);
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
    return acc[0];
}

PP_FN double dot_double(const float* a, const float* b, int64_t d) {
    return lane_sum16(d, [=](int64_t t) { return static_cast<double>(a[t]) * static_cast<double>(b[t]); });
}

PP_FN double sum_sq(const float* a, int64_t d) {
    return lane_sum16(d, [=](int64_t t) {
        const double v = a[t];
        return v * v;
    });
}

PP_FN double residual_sq(const float* a, const float* b, double f, int64_t d) {
    return lane_sum16(d, [=](int64_t t) {
        const double e = static_cast<double>(a[t]) - f * static_cast<double>(b[t]);
        return e * e;
    });
}

/// <a, b> as the packed CPU kernels compute an entry of a product: one fused multiply-add
/// chain per block of kKC entries of depth, starting from zero, the blocks' results added
/// in order.
PP_FN float chain_dot(const float* a, const float* b, int64_t d) {
    float total = 0.0f;
    for (int64_t kb = 0; kb < d; kb += kKC) {
        const int64_t ke = d < kb + kKC ? d : kb + kKC;
        float acc = 0.0f;
        for (int64_t t = kb; t < ke; ++t) acc = PP_FMAF(a[t], b[t], acc);
        total = kb == 0 ? acc : total + acc;
    }
    return total;
}

/// The squared norm of a centroid sum as set_centroid's `omp simd` reduction adds it on
/// the x86-64 baseline (two lanes, then the odd tail). Only its rounding can differ from
/// another order's, and only the last bit of 1/|sum|: a float centroid entry changes with
/// odds of about 2^-29.
PP_FN double sum_sq_2lanes(const double* a, int64_t d) {
    double s0 = 0.0, s1 = 0.0;
    int64_t t = 0;
    for (; t + 2 <= d; t += 2) {
        s0 += a[t] * a[t];
        s1 += a[t + 1] * a[t + 1];
    }
    double s = s0 + s1;
    for (; t < d; ++t) s += a[t] * a[t];
    return s;
}

// --- block reductions ----------------------------------------------------------------------

/// Sum of every thread's `v`, added in thread order (the same result for the same block
/// size) through `red` (a slot per thread) and `out`.
template <class T>
PP_FN T block_reduce(T v, T* red, T* out) {
    red[PP_TID] = v;
    PP_SYNC();
    if (PP_TID == 0) {
        T s = 0;
        for (int64_t t = 0; t < PP_NT; ++t) s += red[t];
        *out = s;
    }
    PP_SYNC();
    const T r = *out;
    PP_SYNC();
    return r;
}

PP_FN double block_sum(double v, Ctl& ctl) { return block_reduce(v, ctl.red_d, &ctl.out_d); }
PP_FN int64_t block_count(int64_t v, Ctl& ctl) { return block_reduce(v, ctl.red_i, &ctl.out_i); }

/// The last of `count` batch entries whose first index (`first(i)`, increasing) is <= g: the
/// entry (layer, task) a global row or tile index g falls in.
template <class First>
PP_FN int entry_of(int64_t g, int count, First first) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (first(mid) <= g) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

/// splitmix64, as the CPU solver's Rng.
struct Rng {
    uint64_t state;
    PP_FN explicit Rng(uint64_t seed) : state(seed + 0x9E3779B97F4A7C15ull) {}
    PP_FN uint64_t next() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    PP_FN double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
};

// --- normalisation (its own kernel on the GPU: the Gram product needs every row first) ----

/// Row i of the job: its norm (sqrt of the 16-lane sum of squares), the unit row
/// x * float(1 / norm), and whether it has a direction. Returns whether the norm is finite.
PP_FN bool normalize_row(const Job& J, int64_t i) {
    const float* r = J.x + i * J.d;
    float* o = J.xn + i * J.d;
    const double nrm = PP_SQRT(sum_sq(r, J.d));
    J.norms[i] = static_cast<float>(nrm);
    const float inv = nrm > 0.0 ? static_cast<float>(1.0 / nrm) : 0.0f;
    for (int64_t t = 0; t < J.d; ++t) o[t] = r[t] * inv;
    J.nonzero[i] = J.norms[i] > 0.0f ? 1 : 0;
    return nrm - nrm == 0.0;  // finite: inf - inf and NaN are NaN
}

// --- the solver ------------------------------------------------------------------------

class BlockSolver {
public:
    PP_FN BlockSolver(const Job& j, Ctl& ctl) : J(j), C(ctl), n(j.n), d(j.d), k(j.k) {}

    /// Phase 1: flags, then the starting centroids (given, or k-means++).
    PP_FN void start() {
        int64_t nz = 0;
        for (int64_t i = PP_TID; i < n; i += PP_NT) nz += J.nonzero[i];
        nz = block_count(nz, C);
        if (PP_TID == 0) {
            for (int f = 0; f < kStateSize; ++f) J.state[f] = 0;
            J.state[kNonzero] = nz;
        }
        for (int64_t q = PP_TID; q < k; q += PP_NT) {
            J.moved[q] = 1;
            J.src[q] = kComputed;
            J.inv_norm[q] = 0.0;
        }
        for (int64_t i = PP_TID; i < n; i += PP_NT) J.labels[i] = -1;
        PP_SYNC();
        if (J.init != nullptr) {
            set_init();
        } else {
            kmeanspp();
        }
        PP_SYNC();
    }

    /// Phase 2 of an assignment: which rows of S^T are recomputed, and the list of those
    /// the products kernel multiplies out (plist; the others come from the Gram matrix).
    PP_FN void prepare() {
        if (J.state[kDone]) return;
        const bool gram_ready = J.state[kGramReady] != 0;
        const bool all = !J.state[kAssigned] || !J.reuse;
        int64_t rows = 0;
        for (int64_t j = PP_TID; j < k; j += PP_NT) rows += (all || J.moved[j]) ? 1 : 0;
        rows = block_count(rows, C);
        const bool every = !gram_ready && rows * 4 > k * 3;
        int64_t means = 0;
        for (int64_t j = PP_TID; j < k; j += PP_NT) {
            char f = 0;
            if (every || all || J.moved[j]) {
                const bool from_gram = gram_ready && J.src[j] != kComputed;
                f = from_gram ? 1 : 2;
                means += from_gram && J.src[j] == kMean ? 1 : 0;
            }
            J.rowflag[j] = f;
        }
        means = block_count(means, C);
        if (PP_TID == 0) {
            if (means > 0) group_by(J.sum_label);
            int64_t pm = 0;
            for (int64_t j = 0; j < k; ++j)
                if (J.rowflag[j] == 2) J.plist[pm++] = j;
            J.state[kPm] = pm;
            J.state[kRows] = every ? k : rows;
        }
        PP_SYNC();
    }

    /// Phase 3 of an assignment (after the products kernel wrote the plist rows): the Gram
    /// rows, the argmax, then the update step unless the run stops here. `it` is the
    /// iteration; with `update_after` false (max_iter = 0) only the assignment runs.
    PP_FN void finish_assign(int it, bool update_after) {
        if (J.state[kDone]) return;
        int64_t changed = 0;
        const int64_t recomputed = J.state[kRows];
        const double obj = assign(&changed);
        if (!update_after) {
            if (PP_TID == 0) J.objective[0] = obj;
            PP_SYNC();
            return;
        }
        const bool stop = J.early_stop && it > 0 && changed == 0;
        int64_t moved = 0, reseeded = 0;
        if (!stop) update(changed, &moved, &reseeded);
        if (PP_TID == 0) {
            J.objective[it] = obj;
            J.stats[4 * it + 0] = changed;
            J.stats[4 * it + 1] = moved;
            J.stats[4 * it + 2] = reseeded;
            J.stats[4 * it + 3] = recomputed;
            J.state[kIters] = it + 1;
            if (stop || it + 1 >= J.max_iter) J.state[kDone] = 1;
        }
        PP_SYNC();
    }

    /// Phase 4: each filter's cosine, the representatives and their statistics.
    PP_FN void finish() {
        own_cosines();
        representatives();
        rep_stats();
        if (PP_TID == 0) J.info[0] = J.state[kIters];
        PP_SYNC();
    }

private:
    PP_FN float* centroid(int64_t j) const { return J.c + j * d; }
    PP_FN const float* row(int64_t i) const { return J.xn + i * d; }

    PP_FN void set_init() {
        for (int64_t j = PP_TID; j < k; j += PP_NT) {
            const float* s = J.init + j * d;
            const float f = static_cast<float>(1.0 / PP_SQRT(sum_sq(s, d)));  // checked non-zero by the host
            for (int64_t t = 0; t < d; ++t) centroid(j)[t] = s[t] * f;
        }
    }

    /// Greedy k-means++ (Solver::kmeanspp): the draws and the choice serial in thread 0,
    /// the candidates' dots, potentials and the distance update over the block.
    PP_FN void kmeanspp() {
        if (J.state[kNonzero] == 0) {
            for (int64_t j = 0; j < k; ++j) set_basis(j);
            return;
        }
        if (PP_TID == 0) J.state[kGramReady] = J.use_gram;
        for (int64_t i = PP_TID; i < n; i += PP_NT) {
            J.mind[i] = J.nonzero[i] ? 2.0 : 0.0;
            J.used[i] = 0;
        }
        PP_SYNC();
        Rng rng(J.seed);  // advanced by thread 0 only
        const bool gram_ready = J.use_gram != 0;
        for (int64_t j = 0; j < k; ++j) {
            if (PP_TID == 0) draw(j, &rng);
            PP_SYNC();
            const int64_t m = C.m;
            if (m == 0) {
                set_basis(j);
                PP_SYNC();
                continue;
            }
            const bool last = j + 1 == k;
            if (m == 1 && last) {
                take_seed(j, C.picks[0]);
                break;
            }
            if (!gram_ready) {  // the candidates' dots with every filter
                for (int64_t e = PP_TID; e < m * n; e += PP_NT) {
                    const int64_t t = e / n, i = e % n;
                    J.dots[e] = chain_dot(row(C.picks[t]), row(i), d);
                }
                PP_SYNC();
            }
            if (m > 1) {
                potentials(m);  // sets C.best_t
            } else if (PP_TID == 0) {
                C.best_t = 0;
            }
            PP_SYNC();
            const int64_t p = C.picks[C.best_t];
            const float* bd = gram_ready ? J.gram + p * n : J.dots + C.best_t * n;
            take_seed(j, p);
            if (PP_TID == 0) J.used[p] = 1;
            PP_SYNC();
            if (last) break;
            for (int64_t i = PP_TID; i < n; i += PP_NT) {
                if (!J.nonzero[i] || J.used[i]) {
                    J.mind[i] = 0.0;
                    continue;
                }
                const double v = 1.0 - static_cast<double>(bd[i]);
                const double dist = v > 0.0 ? v : 0.0;  // std::max(0.0, v)
                J.mind[i] = dist < J.mind[i] ? dist : J.mind[i];  // std::min(mind, dist)
            }
            PP_SYNC();
        }
    }

    /// Thread 0: the candidates of seed j into C.picks / C.m (0: no direction left).
    PP_FN void draw(int64_t j, Rng* rng) {
        int64_t m = 0;
        double total = 0.0;
        for (int64_t i = 0; i < n; ++i) J.prefix[i] = total += J.mind[i];
        if (total > 0.0) {
            const int64_t draws = j == 0 ? 1 : J.trials;
            for (int64_t t = 0; t < draws; ++t) {
                const double target = rng->uniform() * total;
                int64_t lo = 0, hi = n;  // upper_bound: the first prefix > target
                while (lo < hi) {
                    const int64_t mid = lo + (hi - lo) / 2;
                    if (target < J.prefix[mid]) {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                int64_t pick = lo;
                if (pick == n) {
                    pick = n - 1;
                    while (pick > 0 && !(J.mind[pick] > 0.0)) --pick;
                }
                bool seen = false;
                for (int64_t q = 0; q < m; ++q) seen |= C.picks[q] == pick;
                if (!seen) C.picks[m++] = pick;
            }
        } else {
            for (int64_t i = 0; i < n && m == 0; ++i)
                if (!J.used[i] && J.nonzero[i]) C.picks[m++] = i;
        }
        C.m = m;
    }

    /// seed_potentials: candidate t's total distance, summed in 8 interleaved lanes (lane l
    /// takes filters l, l + 8, ... below the last full group of 8, then the tail one each),
    /// the lanes then added in order. Sets C.best_t (the first lowest).
    PP_FN void potentials(int64_t m) {
        constexpr int64_t L = 8;
        const int64_t full = n / L * L;
        for (int64_t e = PP_TID; e < m * L; e += PP_NT) {
            const int64_t t = e / L, l = e % L;
            const float* dt = J.use_gram ? J.gram + C.picks[t] * n : J.dots + t * n;
            double acc = 0.0;
            for (int64_t i = l; i < full; i += L) acc += capped(J.mind[i], dt[i]);
            if (full + l < n) acc += capped(J.mind[full + l], dt[full + l]);
            C.red_d[e] = acc;
        }
        PP_SYNC();
        if (PP_TID == 0) {
            double best = HUGE_VAL;
            int64_t bt = 0;
            for (int64_t t = 0; t < m; ++t) {
                double s = 0.0;
                for (int64_t l = 0; l < L; ++l) s += C.red_d[t * L + l];
                if (s < best) {
                    best = s;
                    bt = t;
                }
            }
            C.best_t = bt;
        }
    }

    PP_FN static double capped(double mind, float dot) {
        const double dist = 1.0 - static_cast<double>(dot);
        const double pos = 0.0 < dist ? dist : 0.0;
        return pos < mind ? pos : mind;
    }

    PP_FN void set_basis(int64_t j) {
        for (int64_t t = PP_TID; t < d; t += PP_NT) centroid(j)[t] = t == j % d ? 1.0f : 0.0f;
        if (PP_TID == 0) J.src[j] = kComputed;
    }

    PP_FN void take_seed(int64_t j, int64_t p) {
        for (int64_t t = PP_TID; t < d; t += PP_NT) centroid(j)[t] = row(p)[t];
        if (PP_TID == 0) J.src[j] = p;
    }

    /// Thread 0: filters grouped by `labels` in index order (group_by_label).
    PP_FN void group_by(const int64_t* labels) {
        for (int64_t j = 0; j <= k; ++j) J.mstart[j] = 0;
        for (int64_t i = 0; i < n; ++i) ++J.mstart[labels[i] + 1];
        for (int64_t j = 0; j < k; ++j) J.mstart[j + 1] += J.mstart[j];
        for (int64_t j = 0; j < k; ++j) J.pos[j] = J.mstart[j];
        for (int64_t i = 0; i < n; ++i) J.morder[J.pos[labels[i]]++] = i;
    }

    /// Solver::assign after prepare() and the products: the rows read from the Gram matrix,
    /// then the argmax over every centroid.
    PP_FN double assign(int64_t* changed) {
        for (int64_t e = PP_TID; e < k * n; e += PP_NT) {
            const int64_t j = e / n, i = e % n;
            if (J.rowflag[j] != 1) continue;
            float v;
            if (J.src[j] >= 0) {
                v = J.gram[J.src[j] * n + i];
            } else {
                double a = 0.0;
                for (int64_t q = J.mstart[j]; q < J.mstart[j + 1]; ++q) a += static_cast<double>(J.gram[J.morder[q] * n + i]);
                v = static_cast<float>(a * J.inv_norm[j]);
            }
            J.s[j * n + i] = v;
        }
        PP_SYNC();
        double obj = 0.0;
        int64_t ch = 0;
        for (int64_t i = PP_TID; i < n; i += PP_NT) {
            float b = J.s[i];
            int64_t a = 0;
            for (int64_t j = 1; j < k; ++j) {
                const float v = J.s[j * n + i];
                if (v > b) {
                    b = v;
                    a = j;
                }
            }
            if (!J.nonzero[i]) {
                b = 0.0f;
                a = 0;
            }
            J.best[i] = b;
            obj += b;
            ch += J.labels[i] != a ? 1 : 0;
            J.labels[i] = a;
        }
        for (int64_t j = PP_TID; j < k; j += PP_NT) J.moved[j] = 0;
        *changed = block_count(ch, C);
        obj = block_sum(obj, C);
        if (PP_TID == 0) J.state[kAssigned] = 1;
        PP_SYNC();
        return obj;
    }

    /// Solver::update: member sums rebuilt or moved filter by filter, centroids normalised,
    /// empty clusters re-seeded.
    PP_FN void update(int64_t changed, int64_t* moved, int64_t* reseeded) {
        const bool full = !J.state[kSumsBuilt] || changed * 4 > n;
        if (full) {
            for (int64_t i = PP_TID; i < n; i += PP_NT) J.sum_label[i] = J.labels[i];
            for (int64_t j = PP_TID; j < k; j += PP_NT) J.touched[j] = 1;
            PP_SYNC();
            if (PP_TID == 0) {
                J.state[kSumsBuilt] = 1;
                group_by(J.sum_label);
            }
            PP_SYNC();
            store_sums();  // the rebuilt sums, kept (the CPU rebuilds the same sums when it needs them)
        } else {
            if (!J.state[kSumsStored]) {
                if (PP_TID == 0) group_by(J.sum_label);
                PP_SYNC();
                store_sums();
            }
            for (int64_t j = PP_TID; j < k; j += PP_NT) J.touched[j] = 0;
            PP_SYNC();
            if (PP_TID == 0) {  // the filters that change cluster, in index order
                int64_t c = 0;
                for (int64_t i = 0; i < n; ++i)
                    if (J.sum_label[i] != J.labels[i]) J.list[c++] = i;
                C.count = c;
            }
            PP_SYNC();
            const int64_t cnt = C.count;
            for (int64_t t = PP_TID; t < d; t += PP_NT) {  // move_row, filter by filter
                for (int64_t q = 0; q < cnt; ++q) {
                    const int64_t i = J.list[q];
                    const double r = row(i)[t];
                    J.sum[J.sum_label[i] * d + t] -= r;
                    J.sum[J.labels[i] * d + t] += r;
                }
            }
            PP_SYNC();
            if (PP_TID == 0) {
                for (int64_t q = 0; q < cnt; ++q) {
                    const int64_t i = J.list[q];
                    J.touched[J.sum_label[i]] = J.touched[J.labels[i]] = 1;
                    J.sum_label[i] = J.labels[i];
                }
                group_by(J.sum_label);
            }
            PP_SYNC();
        }
        int64_t n_empty = 0;
        for (int64_t j = PP_TID; j < k; j += PP_NT) {
            const int64_t count = J.mstart[j + 1] - J.mstart[j];
            J.empty[j] = count == 0 ? 1 : 0;
            if (count == 0) {
                J.src[j] = kComputed;
                ++n_empty;
                continue;
            }
            if (!J.touched[j]) continue;
            set_centroid(j, J.sum + j * d, static_cast<double>(count));
        }
        n_empty = block_count(n_empty, C);
        *reseeded = n_empty > 0 ? reseed(n_empty) : 0;
        int64_t mv = 0;
        for (int64_t j = PP_TID; j < k; j += PP_NT) mv += J.moved[j];
        *moved = block_count(mv, C);
    }

    /// sum = every cluster's members (as grouped) summed in index order, zero when empty.
    PP_FN void store_sums() {
        for (int64_t e = PP_TID; e < k * d; e += PP_NT) {
            const int64_t j = e / d, t = e % d;
            const int64_t q0 = J.mstart[j], q1 = J.mstart[j + 1];
            double a = 0.0;
            if (q1 > q0) {
                a = row(J.morder[q0])[t];
                for (int64_t q = q0 + 1; q < q1; ++q) a += row(J.morder[q])[t];
            }
            J.sum[e] = a;
        }
        if (PP_TID == 0) J.state[kSumsStored] = 1;
        PP_SYNC();
    }

    PP_FN void set_centroid(int64_t j, const double* a, double cnt) {
        const double s = sum_sq_2lanes(a, d);
        if (!(s > 1e-24)) {
            J.src[j] = kComputed;
            return;
        }
        const double inv = 1.0 / PP_SQRT(s);
        J.src[j] = s >= 1e-4 * cnt * cnt ? kMean : kComputed;
        J.inv_norm[j] = inv;
        bool differs = false;
        float* c = centroid(j);
        for (int64_t t = 0; t < d; ++t) {
            const float v = static_cast<float>(a[t] * inv);
            differs |= v != c[t];
            c[t] = v;
        }
        if (differs) J.moved[j] = 1;
    }

    /// Every empty cluster, in order, takes the worst-served non-zero filter not taken yet
    /// (lowest best similarity, then lowest index). Returns how many were re-seeded.
    PP_FN int64_t reseed(int64_t n_empty) {
        for (int64_t i = PP_TID; i < n; i += PP_NT) J.taken[i] = 0;
        PP_SYNC();
        int64_t q = 0;
        for (int64_t j = 0; j < k && q < n_empty; ++j) {
            if (!J.empty[j]) continue;
            float bv = 0.0f;
            int64_t bi = -1;
            for (int64_t i = PP_TID; i < n; i += PP_NT) {
                if (!J.nonzero[i] || J.taken[i]) continue;
                if (bi < 0 || J.best[i] < bv) {  // strided in index order: ties keep the lower index
                    bv = J.best[i];
                    bi = i;
                }
            }
            C.red_d[PP_TID] = bv;
            C.red_i[PP_TID] = bi;
            PP_SYNC();
            if (PP_TID == 0) {
                int64_t w = -1;
                double wv = 0.0;
                for (int64_t t = 0; t < PP_NT; ++t) {
                    const int64_t i = C.red_i[t];
                    if (i < 0) continue;
                    if (w < 0 || C.red_d[t] < wv || (C.red_d[t] == wv && i < w)) {
                        w = i;
                        wv = C.red_d[t];
                    }
                }
                C.out_i = w;
                if (w >= 0) {
                    J.taken[w] = 1;
                    J.src[j] = w;
                    J.moved[j] = 1;
                }
            }
            PP_SYNC();
            const int64_t w = C.out_i;
            PP_SYNC();
            if (w < 0) break;  // fewer directions than clusters: the rest stay where they were
            for (int64_t t = PP_TID; t < d; t += PP_NT) centroid(j)[t] = row(w)[t];
            ++q;
        }
        PP_SYNC();
        return q;
    }

    PP_FN void own_cosines() {
        for (int64_t i = PP_TID; i < n; i += PP_NT)
            J.cosines[i] = static_cast<float>(dot_double(row(i), centroid(J.labels[i]), d));
        PP_SYNC();
    }

    /// Per cluster the member of highest cosine (the first of equals); an empty cluster the
    /// filter of highest dot with its centroid among those not chosen yet.
    PP_FN void representatives() {
        if (PP_TID == 0) group_by(J.labels);
        for (int64_t i = PP_TID; i < n; i += PP_NT) J.taken[i] = 0;
        PP_SYNC();
        for (int64_t j = PP_TID; j < k; j += PP_NT) {
            int64_t r = -1;
            for (int64_t q = J.mstart[j]; q < J.mstart[j + 1]; ++q) {
                const int64_t i = J.morder[q];
                if (r < 0 || J.cosines[i] > J.cosines[r]) r = i;
            }
            J.reps[j] = r;
            if (r >= 0) J.taken[r] = 1;
        }
        PP_SYNC();
        for (int64_t j = 0; j < k; ++j) {
            if (J.reps[j] >= 0) continue;  // uniform: every thread reads the same value
            for (int64_t i = PP_TID; i < n; i += PP_NT) J.dots[i] = chain_dot(centroid(j), row(i), d);
            PP_SYNC();
            if (PP_TID == 0) {
                int64_t b = -1;
                for (int64_t i = 0; i < n; ++i)
                    if (!J.taken[i] && (b < 0 || J.dots[i] > J.dots[b])) b = i;
                J.reps[j] = b;
                J.taken[b] = 1;
            }
            PP_SYNC();
        }
    }

    /// Solver::rep_stats on the filters as given.
    PP_FN void rep_stats() {
        for (int64_t i = PP_TID; i < n; i += PP_NT) {
            J.rep_cos[i] = 0.0f;
            J.rep_res[i] = 0.0f;
            const int64_t q = J.reps[J.labels[i]];
            const float* b = J.x + q * d;
            const double bb = dot_double(b, b, d), nb = PP_SQRT(bb);
            if (!(nb > 0.0)) continue;
            const double na = J.norms[i];
            if (!(na > 0.0)) continue;
            if (q == i) {
                J.rep_cos[i] = 1.0f;
                continue;
            }
            const float* a = J.x + i * d;
            const double ab = dot_double(a, b, d);
            J.rep_cos[i] = static_cast<float>(ab / (na * nb));
            J.rep_res[i] = static_cast<float>(PP_SQRT(residual_sq(a, b, ab / bb, d)) / na);
        }
        PP_SYNC();
    }

    const Job& J;
    Ctl& C;
    int64_t n, d, k;
};

}  // namespace pyprune::device
