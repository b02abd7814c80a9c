#include "kmeans.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <numeric>
#include <string>

#include "blas.h"
#include "check.h"
#include "gemm.h"
#include "reduce.h"
#include "similarity.h"

namespace pyprune {

Filters::Filters(std::vector<MatrixView> parts, const std::string& what) : blocks(std::move(parts)) {
    PYPRUNE_CHECK(!blocks.empty(), what, ": an empty list of column blocks");
    rows = blocks[0].rows;
    for (size_t b = 0; b < blocks.size(); ++b) {
        PYPRUNE_CHECK(blocks[b].rows == rows, what, ": every column block needs the same rows (filters): block 0 has ",
                      rows, ", block ", b, " has ", blocks[b].rows);
        cols += blocks[b].cols;
    }
}

const float* Filters::row(int64_t i, float* scratch) const {
    if (blocks.size() == 1) return blocks[0].data + i * blocks[0].cols;
    copy(i, 0, cols, scratch);
    return scratch;
}

void Filters::copy(int64_t i, int64_t c0, int64_t c1, float* out) const {
    int64_t off = 0;  // first column of block b
    for (const MatrixView& b : blocks) {
        const int64_t lo = std::max(c0, off), hi = std::min(c1, off + b.cols);
        if (lo < hi) std::memcpy(out + (lo - c0), b.data + i * b.cols + (lo - off), sizeof(float) * (hi - lo));
        off += b.cols;
        if (off >= c1) break;
    }
}

namespace {

/// The shape check of every block (validate() less the values: those are checked while
/// the filters are normalised).
void check_shape(const Filters& x, const std::string& what) {
    for (size_t b = 0; b < x.blocks.size(); ++b)
        check_shape(x.blocks[b], (x.blocks.size() == 1 ? what : what + " block " + std::to_string(b)).c_str());
}

/// The error validate() raises for filter i, which holds a non-finite value.
[[noreturn]] void non_finite(const Filters& x, int64_t i, const std::string& what) {
    std::vector<float> r(static_cast<size_t>(x.cols));
    x.copy(i, 0, x.cols, r.data());
    raise_non_finite(r.data(), x.cols, i, what);
}

/// splitmix64: small, fast and identical on every platform (std distributions are not).
struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed) : state(seed + 0x9E3779B97F4A7C15ull) {}
    uint64_t next() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    /// uniform in [0, 1)
    double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
};

/// min(mind, max(0, 1 - dot)): a filter's distance to its nearest seed if the candidate
/// with this dot joined the seeds (written with selects, which vectorise).
inline double capped(double mind, float dot) {
    const double dist = 1.0 - static_cast<double>(dot);
    const double pos = 0.0 < dist ? dist : 0.0;
    return pos < mind ? pos : mind;
}

constexpr int64_t kLanes = 8;

/// The most filters a layer may have for its Gram matrix to be kept (n^2 floats: 128 MB).
constexpr int64_t kGramMaxRows = 5792;

/// Columns per BLAS product of the Gram matrix (compute_gram on the BLAS path).
constexpr int64_t kBlasGramPanel = 128;

/// pot[t] = sum over the n filters of min(mind_i, 1 - <x_i, candidate t>) (the total
/// distance if candidate t became a seed; filters with mind_i = 0 add nothing). Summed in
/// kLanes interleaved partial sums (`acc`, m x kLanes zeros), then the lanes in order: a
/// fixed order, so every CPU and every vector width gives the same bits. Compiled for
/// AVX-512 and AVX2 beside the baseline, chosen at load time (no multiply: no FMA can
/// change a rounding).
PYPRUNE_CLONES void seed_potentials(int64_t n, const double* mind, const float* const* dptr, int64_t m, double* acc, double* pot) {
    constexpr int64_t L = kLanes;
    const int64_t full = n / L * L;
    for (int64_t i0 = 0; i0 < full; i0 += L) {
        const double* mi = mind + i0;
        for (int64_t t = 0; t < m; ++t) {
            const float* dt = dptr[t] + i0;
            double* a = acc + t * L;
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) a[l] += capped(mi[l], dt[l]);
        }
    }
    for (int64_t i = full; i < n; ++i)  // the tail: lane i - full
        for (int64_t t = 0; t < m; ++t) acc[t * L + (i - full)] += capped(mind[i], dptr[t][i]);
    for (int64_t t = 0; t < m; ++t) {
        double s = 0.0;
        for (int64_t l = 0; l < L; ++l) s += acc[t * L + l];
        pot[t] = s;
    }
}

/// The large buffers of a layer's clustering, kept by one thread from one layer to the next
/// of a batch: a layer then reuses pages it has touched already instead of faulting in (and
/// zero-filling) fresh ones. On densenet201 that was a tenth of the time outside the products.
struct Workspace {
    Buffer<float> xn, xt, s, gram;
    Buffer<double> sum;
    PackedRows xp;
};

/// The state of one layer's clustering. `nt` threads split each step's rows.
class Solver {
public:
    /// `p.kernel` must be set (see resolved()). The buffers of `ws` are borrowed until the
    /// solver is destroyed.
    Solver(const Filters& x, const KMeansParams& p, int nt, Workspace& ws, const std::string& what)
        : x_(x), n_(x.rows), d_(x.cols), k_(p.k), p_(p), nt_(nt), kernel_(*p.kernel), ws_(ws),
          xn_(std::move(ws.xn)), xt_(std::move(ws.xt)), xp_(std::move(ws.xp)), nonzero_(static_cast<size_t>(n_)),
          c_(static_cast<size_t>(k_ * d_)), s_(std::move(ws.s)),
          best_(static_cast<size_t>(n_)), labels_(static_cast<size_t>(n_), -1),
          moved_(static_cast<size_t>(k_), 1), src_(static_cast<size_t>(k_), kComputed),
          inv_norm_(static_cast<size_t>(k_), 0.0) {
        gram_.swap(ws.gram);
        sum_.swap(ws.sum);  // stale until the first update
        // Every entry of these is written before it is read: a buffer too small for this
        // layer is replaced, not grown (growing would copy the last layer's numbers).
        fit(&s_, n_ * k_);
        norms_.resize(static_cast<size_t>(n_));
        const int64_t bad = normalize_and_pack();  // X never changes: packed once
        if (bad >= 0) non_finite(x_, bad, what);
        int64_t nonzero = 0;
        for (int64_t i = 0; i < n_; ++i) {  // a row has a direction when its norm is > 0
            nonzero_[i] = norms_[i] > 0.0f ? 1 : 0;
            nonzero += nonzero_[i];
        }
        n_nonzero_ = nonzero;
    }

    /// xn_ = the filters scaled to unit length (norms_: their lengths) and, for a packed
    /// kernel, xp_ = xn_ packed. Each panel of rows is packed right after it is normalised,
    /// while it is in cache: one pass over the filters instead of two. The BLAS path keeps
    /// xt_ = xn_^T (d x n) instead, so its products C X^T are NN products: OpenBLAS packs
    /// a non-transposed operand with contiguous loads, which made densenet201's products
    /// 2.5% faster (its 128-filter layers 4%) than the NT product on xn_. Returns the first
    /// filter whose length is not finite (it holds an infinite or NaN value), -1 when none:
    /// the one check of the values.
    int64_t normalize_and_pack() {
        fit(&xn_, n_ * d_);
        if (!packed_) {
            const int64_t bad = normalize_block(0, n_, nt_);
            transpose_rows();
            return bad;
        }
        prepare_packed(n_, d_, kernel_, &xp_);
        const int64_t w = xp_.panel, panels = (n_ + w - 1) / w;
        const int nt = nt_;
        int64_t bad = n_;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : bad) if (nt > 1 && panels > 1 && n_ * d_ > 65536)
        for (int64_t q = 0; q < panels; ++q) {
            const int64_t lo = q * w, b = normalize_block(lo, std::min(n_, lo + w), 1);
            if (b >= 0) bad = std::min(bad, lo + b);
            pack_panel(xn_.data(), d_, q, &xp_);
        }
        return bad < n_ ? bad : -1;
    }

    /// Rows lo..hi of xn_ and norms_ (normalize_rows, from the filters' blocks: a single
    /// block is read in place, several are gathered into xn_ and scaled there); returns
    /// the first row of the range with a non-finite norm, relative to lo (-1: none).
    int64_t normalize_block(int64_t lo, int64_t hi, int threads) {
        float* out = xn_.data() + lo * d_;
        if (x_.blocks.size() == 1)
            return normalize_rows(MatrixView{x_.blocks[0].data + lo * d_, hi - lo, d_}, out, threads, norms_.data() + lo);
        for (int64_t i = lo; i < hi; ++i) x_.copy(i, 0, d_, out + (i - lo) * d_);
        return normalize_rows(MatrixView{out, hi - lo, d_}, out, threads, norms_.data() + lo);
    }

    const float* row(int64_t i) const { return xn_.data() + i * d_; }

    /// xt_ = xn_^T through the BLAS's transpose (7x faster than a tiled loop on 128 x 1024:
    /// rows 4 KB apart alias in L1), row ranges split over the threads.
    void transpose_rows() {
        fit(&xt_, n_ * d_);
        const int np = n_ * d_ > 65536 ? parts() : 1;
        parallel_rows(n_, np, 1, [&](int, int64_t lo, int64_t hi) {
            blas::transpose(hi - lo, d_, xn_.data() + lo * d_, d_, xt_.data() + lo, n_);
        });
    }

    /// v resized to m entries, its old contents dropped.
    template <typename T>
    static void fit(Buffer<T>* v, int64_t m) {
        if (v->capacity() < static_cast<size_t>(m)) v->clear();
        v->resize(static_cast<size_t>(m));
    }

    ~Solver() {
        ws_.xn = std::move(xn_);
        ws_.xt = std::move(xt_);
        ws_.xp = std::move(xp_);
        ws_.s = std::move(s_);
        ws_.gram = std::move(gram_);
        ws_.sum = std::move(sum_);
    }

    Solver(const Solver&) = delete;
    Solver& operator=(const Solver&) = delete;

    KMeansResult run(const float* init) {
        if (init != nullptr) {
            set_init(init);
        } else {
            kmeanspp();
        }
        KMeansResult r;
        r.n = n_;
        r.d = d_;
        r.k = k_;
        r.kernel = kernel_;
        for (int it = 0; it < p_.max_iter; ++it) {
            IterationStats st;
            const double t0 = omp_get_wtime();
            const double obj = assign(&st.changed, &st.recomputed);
            r.objective.push_back(obj);
            r.n_iter = it + 1;
            const bool stop = p_.early_stop && it > 0 && st.changed == 0;
            if (!stop) update(st.changed, &st.moved, &st.reseeded);
            st.seconds = omp_get_wtime() - t0;
            r.stats.push_back(st);
            if (stop) break;
        }
        if (p_.max_iter == 0) {  // no iteration asked: labels from the initial centroids
            int64_t changed = 0, recomputed = 0;
            r.objective.push_back(assign(&changed, &recomputed));
        }
        r.labels = labels_;
        r.cosines = own_cosines();
        r.representatives = representatives(r.cosines);
        rep_stats(r.representatives, &r);
        r.norms = std::move(norms_);
        r.centroids = std::move(c_);
        return r;
    }

private:
    float* centroid(int64_t j) { return c_.data() + j * d_; }

    void set_init(const float* init) {
        for (int64_t j = 0; j < k_; ++j) {
            const float* src = init + j * d_;
            const double s = sum_sq(src, d_);
            PYPRUNE_CHECK(std::isfinite(s) && s > 0.0, "init: centroid ", j,
                          " must be finite and non-zero (squared norm ", s, ")");
            scale_row(src, static_cast<float>(1.0 / std::sqrt(s)), d_, centroid(j));
        }
    }

    void set_basis(int64_t j) {
        std::fill(centroid(j), centroid(j) + d_, 0.0f);
        centroid(j)[j % d_] = 1.0f;
        src_[j] = kComputed;
    }

    /// Dots of filters with filters: out[t * n + i] = <x_rows[t], x_i> for the m rows
    /// `rows`, on the run's kernel: the packed kernel computes every entry the same way
    /// whatever the thread split or the tile it falls in (one FMA chain over the depth, in
    /// order), so these dots are bit-identical to the entries of the first assignment's
    /// product and of the Gram matrix (compute_gram). The BLAS path runs one unsplit call,
    /// so its result does not depend on the thread count either.
    void dots_of_rows(const int64_t* rows, int64_t m, float* out) {
        cand_.resize(static_cast<size_t>(m * d_));
        for (int64_t t = 0; t < m; ++t) std::memcpy(cand_.data() + t * d_, row(rows[t]), sizeof(float) * d_);
        dots_of(cand_.data(), m, out);
    }

    /// out[t * n + i] = <v_t, x_i> for m directions v (m x d), as dots_of_rows.
    void dots_of(const float* v, int64_t m, float* out) const {
        if (!packed_) {
            blas::gemm_nn(m, n_, d_, v, d_, xt_.data(), n_, out, n_);
            return;
        }
        parallel_rows(n_, parts(), grain(), [&](int, int64_t lo, int64_t hi) {
            products(m, v, lo, hi, out + lo, n_);
        });
    }

    /// Greedy k-means++ evaluates about K (2 + ln K) candidate filters against all n, and
    /// every Lloyd iteration after it at least K centroids (K n d each way). The Gram matrix
    /// X X^T costs n^2 d / 2 once (the upper half, mirrored), after which each candidate's
    /// dots are one of its rows (on a packed path the same numbers: see dots_of_rows, so the
    /// seeds do not depend on the choice; on the BLAS path the same up to float rounding,
    /// and the Gram matrix's bits do not depend on the thread count, as every panel is one
    /// call of the same shape whichever thread runs it) and each iteration's similarities
    /// are sums of its rows (gram_rows: n^2 additions instead of K n d multiply-adds). So
    /// it is computed when
    /// seeding and two iterations would multiply out more than it costs, while n^2 floats
    /// fit in 128 MB. On every path: the BLAS runs the Gram matrix's large products near its
    /// peak, and the candidates' skinny products (a few rows each) far from it.
    bool use_gram(int64_t trials) const {
        return n_ <= kGramMaxRows && 2 * k_ * (trials + 2) >= n_;
    }

    /// Greedy k-means++ with the cosine distance 1 - cos (half the squared chord length):
    /// each step samples 2 + ln(K) candidates in proportion to their distance to the
    /// nearest chosen seed and keeps the one that lowers the total distance most (the
    /// variant scikit-learn uses; plain k-means++ falls into poor local optima far more
    /// often on filters with real cluster structure). The draws read a running sum of the
    /// distances (the same additions in the same order as a sequential scan, so the same
    /// picks) by binary search; the candidates' potentials are summed side by side.
    void kmeanspp() {
        if (n_nonzero_ == 0) {
            for (int64_t j = 0; j < k_; ++j) set_basis(j);
            return;
        }
        Rng rng(p_.seed);
        const int64_t trials = 2 + static_cast<int64_t>(std::log(static_cast<double>(k_)));
        std::vector<double> mind(static_cast<size_t>(n_)), prefix(static_cast<size_t>(n_));
        std::vector<char> used(static_cast<size_t>(n_), 0);
        std::vector<double> pot(static_cast<size_t>(trials));
        std::vector<const float*> dptr(static_cast<size_t>(trials));
        std::vector<int64_t> picks;
        const bool gram = use_gram(trials);
        if (gram) {
            compute_gram();
        } else {
            dots_.resize(static_cast<size_t>(n_ * trials));
        }
        for (int64_t i = 0; i < n_; ++i) mind[i] = nonzero_[i] ? 2.0 : 0.0;
        for (int64_t j = 0; j < k_; ++j) {
            picks.clear();
            double total = 0.0;
            for (int64_t i = 0; i < n_; ++i) prefix[i] = total += mind[i];
            if (total > 0.0) {
                const int64_t m = j == 0 ? 1 : trials;  // the first seed: one uniform draw
                for (int64_t t = 0; t < m; ++t) {
                    const double target = rng.uniform() * total;
                    // the first filter whose running sum passes the target (it has mind > 0:
                    // the sum grows only there); else the last filter with mind > 0
                    int64_t pick = std::upper_bound(prefix.begin(), prefix.end(), target) - prefix.begin();
                    if (pick == n_) {
                        pick = n_ - 1;
                        while (pick > 0 && !(mind[pick] > 0.0)) --pick;
                    }
                    if (std::find(picks.begin(), picks.end(), pick) == picks.end()) picks.push_back(pick);
                }
            } else {  // every non-zero filter already coincides with a seed
                for (int64_t i = 0; i < n_ && picks.empty(); ++i)
                    if (!used[i] && nonzero_[i]) picks.push_back(i);
            }
            if (picks.empty()) {
                set_basis(j);
                continue;
            }
            const int64_t m = static_cast<int64_t>(picks.size());
            const bool last = j + 1 == k_;
            if (m == 1 && last) {
                take_seed(j, picks[0]);
                break;
            }
            if (gram) {
                for (int64_t t = 0; t < m; ++t) dptr[t] = gram_.data() + picks[t] * n_;
            } else {
                dots_of_rows(picks.data(), m, dots_.data());
                for (int64_t t = 0; t < m; ++t) dptr[t] = dots_.data() + t * n_;
            }
            int64_t best_t = 0;
            if (m > 1) {
                potentials(mind.data(), dptr.data(), m, pot.data());
                double best_pot = std::numeric_limits<double>::infinity();
                for (int64_t t = 0; t < m; ++t) {
                    if (pot[t] < best_pot) {
                        best_pot = pot[t];
                        best_t = t;
                    }
                }
            }
            used[picks[best_t]] = 1;
            take_seed(j, picks[best_t]);
            if (last) break;
            const float* bd = dptr[best_t];
            for (int64_t i = 0; i < n_; ++i) {
                if (!nonzero_[i] || used[i]) {
                    mind[i] = 0.0;
                    continue;
                }
                const double dist = std::max(0.0, 1.0 - static_cast<double>(bd[i]));
                mind[i] = std::min(mind[i], dist);
            }
        }
    }

    void potentials(const double* mind, const float* const* dptr, int64_t m, double* pot) const {
        lanes_.assign(static_cast<size_t>(m * kLanes), 0.0);
        seed_potentials(n_, mind, dptr, m, lanes_.data(), pot);
    }

    /// gram_ = X X^T. Only the blocks on and above the diagonal are multiplied (per panel of
    /// columns, the rows up to its end), the rest is mirrored: on a packed path entry (i, j)
    /// and (j, i) are the same products added in the same order, so the mirror is exact. The
    /// BLAS path multiplies panels of kBlasGramPanel columns (NN products on xt_) and mirrors
    /// each diagonal block's upper triangle too, as the BLAS does not promise those bits.
    /// Threads take panels in ranges of about equal work (panel q costs q + 1).
    void compute_gram() {
        fit(&gram_, n_ * n_);  // every entry is written below
        gram_ready_ = true;
        const int64_t w = packed_ ? grain() : kBlasGramPanel, panels = (n_ + w - 1) / w;
        const int np = parts();
        auto first_panel = [&](int t) {  // the work of panels 0..q grows as q^2
            return static_cast<int64_t>(std::floor(static_cast<double>(panels) * std::sqrt(static_cast<double>(t) / np)));
        };
        float* g = gram_.data();
        const int64_t group = std::max<int64_t>(1, 384 / w);  // panels per pass over A: ~384 columns
        parallel_rows(np, np, 1, [&](int, int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t end = first_panel(static_cast<int>(t) + 1);
                if (packed_) {
                    for (int64_t q0 = first_panel(static_cast<int>(t)); q0 < end; q0 += group) {
                        // rows 0..hi of the columns lo..hi of each panel, a few panels at a time
                        const int64_t q1 = std::min(end, q0 + group);
                        gemm_packed_upper(xn_.data(), d_, xp_, q0, q1, g, n_);
                    }
                } else {
                    for (int64_t q = first_panel(static_cast<int>(t)); q < end; ++q) {
                        const int64_t lo = q * w, hi = std::min(n_, lo + w);
                        blas::gemm_nn(hi, hi - lo, d_, xn_.data(), d_, xt_.data() + lo, n_, g + lo, n_);
                    }
                }
                for (int64_t q = first_panel(static_cast<int>(t)); q < end; ++q) {
                    const int64_t lo = q * w, hi = std::min(n_, lo + w);
                    const int64_t top = packed_ ? lo : hi;  // the BLAS path: its diagonal block too
                    for (int64_t i0 = 0; i0 < top; i0 += 16) {  // mirror in 16-row tiles (stay in L1)
                        const int64_t i1 = std::min(top, i0 + 16);
                        for (int64_t j = lo; j < hi; ++j)
                            for (int64_t i = i0; i < std::min(i1, j); ++i) g[j * n_ + i] = g[i * n_ + j];
                    }
                }
            }
        });
    }

    /// Centroid j starts as filter p.
    void take_seed(int64_t j, int64_t p) {
        std::memcpy(centroid(j), row(p), sizeof(float) * d_);
        src_[j] = p;
    }

    /// Assignment of filters lo..hi. The similarities are computed transposed,
    /// S^T[K x n] = C X^T (this layout runs measurably closer to the BLAS peak for
    /// these shapes), then a column-wise argmax sweeps S^T row by row (vectorised).
    /// Only the rows `gram_js` and `prod_js` of S^T are recomputed (all K the first time);
    /// the others still hold the similarities of unchanged centroids. `prod_js` are
    /// multiplied out (their centroids packed in `cm`); `gram_js` are read from the Gram
    /// matrix (see gram_rows).
    void assign_rows(int64_t lo, int64_t hi, const std::vector<int64_t>& gram_js,
                     const std::vector<int64_t>& prod_js, const float* cm, double* obj, int64_t* changed) {
        if (hi <= lo) return;
        const int64_t w = hi - lo;
        float* st = s_.data() + lo;  // column block lo..hi of the K x n matrix
        const int64_t m = static_cast<int64_t>(prod_js.size());
        if (m == k_) {
            products(k_, c_.data(), lo, hi, st, n_);
        } else if (m > 0) {
            std::vector<float> part(static_cast<size_t>(m * w));
            products(m, cm, lo, hi, part.data(), w);
            for (int64_t q = 0; q < m; ++q)
                std::memcpy(st + prod_js[q] * n_, part.data() + q * w, sizeof(float) * w);
        }
        if (!gram_js.empty()) gram_rows(gram_js, lo, hi, st);
        float* best = best_.data() + lo;
        std::vector<int32_t> arg(static_cast<size_t>(w), 0);
        int32_t* a = arg.data();
        std::memcpy(best, st, sizeof(float) * w);
        for (int64_t j = 1; j < k_; ++j) {
            const float* r = st + j * n_;
            const int32_t jj = static_cast<int32_t>(j);
            // a mask, not a branch: GCC leaves `gt ? jj : a[i]` a branch (mispredicted
            // about half the time on random data) and does not vectorise it
#pragma omp simd
            for (int64_t i = 0; i < w; ++i) {
                const float v = r[i], b = best[i];
                const int32_t gt = -static_cast<int32_t>(v > b);
                best[i] = std::max(b, v);  // b unless b < v: the same test
                a[i] = (jj & gt) | (a[i] & ~gt);
            }
        }
        double o = 0.0;
        int64_t ch = 0;
        for (int64_t i = 0; i < w; ++i) {
            if (!nonzero_[lo + i]) {  // no direction: cosine 0 whatever the centroid
                best[i] = 0.0f;
                a[i] = 0;
            }
            o += best[i];
            ch += labels_[lo + i] != a[i] ? 1 : 0;
            labels_[lo + i] = a[i];
        }
        *obj += o;
        *changed += ch;
    }

    /// out[m x (hi - lo)] = A[m x d] * X[lo:hi]^T on the run's kernel: the packed X, or X^T
    /// through the BLAS.
    void products(int64_t m, const float* a, int64_t lo, int64_t hi, float* out, int64_t ldo) const {
        if (!packed_) {
            blas::gemm_nn(m, hi - lo, d_, a, d_, xt_.data() + lo, n_, out, ldo);
            return;
        }
        gemm_packed(m, a, d_, xp_, lo, hi, out, ldo);
    }

    /// Threads to split the filters over: one for small layers.
    int parts() const { return nt_ <= 1 || n_ < 64 ? 1 : nt_; }

    /// Filters per split unit: whole panels for the packed kernel.
    int64_t grain() const { return packed_ ? xp_.panel : 1; }

    /// Rows `js` of S^T, columns lo..hi (into `st`, the column block lo..hi, rows n_ apart),
    /// from the Gram matrix X X^T instead of a product with the centroids: a centroid that is
    /// filter p has row p of the Gram matrix as its similarities; one that is its members'
    /// normalised sum s / |s| has (sum of its members' rows) / |s|. That costs n per member
    /// (n^2 for all K centroids) instead of n d per centroid (K n d): with the Gram matrix
    /// there from seeding, Lloyd's iterations multiply nothing. The sums run in double, in
    /// the order of the members' indices, so the numbers do not depend on the thread split;
    /// they are the products with the centroids up to float rounding.
    void gram_rows(const std::vector<int64_t>& js, int64_t lo, int64_t hi, float* st) const {
        const int64_t w = hi - lo;
        std::vector<double> acc(static_cast<size_t>(w));
        double* a = acc.data();
        for (int64_t j : js) {
            float* out = st + j * n_;
            if (src_[j] >= 0) {
                std::memcpy(out, gram_.data() + src_[j] * n_ + lo, sizeof(float) * w);
                continue;
            }
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t q = member_start_[j]; q < member_start_[j + 1]; ++q) {
                const float* g = gram_.data() + member_order_[q] * n_ + lo;
#pragma omp simd
                for (int64_t l = 0; l < w; ++l) a[l] += static_cast<double>(g[l]);
            }
            const double inv = inv_norm_[j];
#pragma omp simd
            for (int64_t l = 0; l < w; ++l) out[l] = static_cast<float>(a[l] * inv);
        }
    }

    /// The members of every cluster as the centroid sums see them (sum_label_), grouped by
    /// cluster in index order: what gram_rows sums.
    void index_members() { group_by_label(sum_label_, &member_start_, &member_order_); }

    /// Assignment step; `recomputed` receives the rows of S^T computed anew.
    double assign(int64_t* changed, int64_t* recomputed) {
        // Which rows of S^T must be recomputed: all of them the first time, when reuse is
        // off, or when most centroids moved and there is no Gram matrix (one full product
        // is then cheaper); otherwise those of the centroids that moved.
        std::vector<int64_t> rows;
        const bool all = !assigned_ || !p_.reuse;
        for (int64_t j = 0; j < k_; ++j)
            if (all || moved_[j]) rows.push_back(j);
        if (!gram_ready_ && static_cast<int64_t>(rows.size()) * 4 > k_ * 3) {
            rows.resize(static_cast<size_t>(k_));
            std::iota(rows.begin(), rows.end(), int64_t{0});
        }
        // With the Gram matrix, every centroid that is a filter or its members' mean is read
        // from it; the rest (unit basis vectors, given or unmoved-on-cancel centroids) are
        // multiplied out.
        std::vector<int64_t> gram_js, prod_js;
        bool means = false;
        for (int64_t j : rows) {
            const bool from_gram = gram_ready_ && src_[j] != kComputed;
            (from_gram ? gram_js : prod_js).push_back(j);
            means |= from_gram && src_[j] == kMean;
        }
        if (means) index_members();
        std::vector<float> cm;
        const int64_t m = static_cast<int64_t>(prod_js.size());
        if (m > 0 && m < k_) {
            cm.resize(static_cast<size_t>(m * d_));
            for (int64_t q = 0; q < m; ++q)
                std::memcpy(cm.data() + q * d_, centroid(prod_js[q]), sizeof(float) * d_);
        }
        *recomputed = static_cast<int64_t>(rows.size());
        const int np = parts();
        std::vector<double> objs(static_cast<size_t>(np), 0.0);
        std::vector<int64_t> chs(static_cast<size_t>(np), 0);
        parallel_rows(n_, np, grain(), [&](int t, int64_t lo, int64_t hi) {
            assign_rows(lo, hi, gram_js, prod_js, cm.data(), &objs[t], &chs[t]);
        });
        assigned_ = true;
        std::fill(moved_.begin(), moved_.end(), 0);
        *changed = std::accumulate(chs.begin(), chs.end(), int64_t{0});
        return std::accumulate(objs.begin(), objs.end(), 0.0);  // in part order: deterministic
    }

    /// Centroid step: each centroid becomes its members' normalised sum. When few filters
    /// changed cluster only those are moved from one sum to the other (the per-cluster sums,
    /// in double, kept in sum_ between iterations), otherwise every sum is rebuilt. A
    /// rebuild sums each cluster in a scratch of its thread and stores nothing: sum_ is
    /// filled (store_sums, the same additions) only when a later update moves filters
    /// between sums, so a run that stops early never writes K x d doubles. The order of the
    /// additions never depends on the thread count. The members' cosines to their centroids
    /// are computed once, after the last update (own_cosines): computing them at every
    /// update, while the rows were in cache, cost n d multiply-adds per rebuild for numbers
    /// only the last one needs.
    /// `moved` and `reseeded` receive how many centroids moved and were re-seeded.
    void update(int64_t changed, int64_t* moved, int64_t* reseeded) {
        const bool full = !sums_built_ || changed * 4 > n_;
        std::vector<char> touched(static_cast<size_t>(k_), full ? 1 : 0);
        if (full) {
            sum_label_ = labels_;
            sums_built_ = true;
            sums_stored_ = false;
        } else {
            if (!sums_stored_) store_sums();
            for (int64_t i = 0; i < n_; ++i) {
                const int64_t from = sum_label_[i], to = labels_[i];
                if (from == to) continue;
                const float* r = row(i);
                move_row(r, d_, sum_.data() + from * d_, sum_.data() + to * d_);
                touched[from] = touched[to] = 1;
                sum_label_[i] = to;
            }
        }
        index_members();
        count_.resize(static_cast<size_t>(k_));
        for (int64_t j = 0; j < k_; ++j) count_[j] = member_start_[j + 1] - member_start_[j];
        std::vector<char> empty(static_cast<size_t>(k_), 0);
        const int nt = nt_;
#pragma omp parallel num_threads(nt) if (nt > 1 && full)
        {
            Buffer<double> acc(static_cast<size_t>(full ? d_ : 0));  // a rebuilt sum
#pragma omp for schedule(dynamic, 16)
            for (int64_t j = 0; j < k_; ++j) {
                if (count_[j] == 0) {
                    empty[j] = 1;
                    src_[j] = kComputed;  // until re-seeded
                    continue;
                }
                if (!touched[j]) continue;
                const double* a = full ? sum_members(j, acc.data()) : sum_.data() + j * d_;
                set_centroid(j, a);
            }
        }
        *reseeded = reseed(empty);
        *moved = std::count(moved_.begin(), moved_.end(), char{1});
    }

    /// Cluster j's sum into a (d doubles): its members (as index_members grouped them) in
    /// index order, the first copied (0 + x = x), the others added. Returns a.
    const double* sum_members(int64_t j, double* a) const {
        const int64_t* members = member_order_.data() + member_start_[j];
        const int64_t count = member_start_[j + 1] - member_start_[j];
        widen_row(row(members[0]), d_, a);
        for (int64_t q = 1; q < count; ++q) add_row(row(members[q]), d_, a);
        return a;
    }

    /// sum_ = every cluster's sum as of sum_label_ (an empty cluster's is zero): what the
    /// last rebuild computed and did not keep.
    void store_sums() {
        fit(&sum_, k_ * d_);
        index_members();
        const int nt = nt_;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16) if (nt > 1)
        for (int64_t j = 0; j < k_; ++j) {
            double* a = sum_.data() + j * d_;
            if (member_start_[j + 1] == member_start_[j]) {
                std::fill(a, a + d_, 0.0);
            } else {
                sum_members(j, a);
            }
        }
        sums_stored_ = true;
    }

    /// Centroid j from its members' sum `a`: normalised, or kept where the members cancel out.
    void set_centroid(int64_t j, const double* a) {
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t t = 0; t < d_; ++t) s += a[t] * a[t];
        if (!(s > 1e-24)) {  // members cancel out: any direction is as good, keep it
            src_[j] = kComputed;  // no longer its members' mean
            return;
        }
        const double inv = 1.0 / std::sqrt(s);
        // Summed Gram rows carry the rounding of every member's dots, divided by |sum|:
        // when the members nearly cancel (|sum| < count / 100, a mean cosine to the
        // centroid under 0.01) the centroid is multiplied out instead.
        const double cnt = static_cast<double>(count_[j]);
        src_[j] = s >= 1e-4 * cnt * cnt ? kMean : kComputed;
        inv_norm_[j] = inv;
        if (narrow_row(a, inv, d_, centroid(j))) moved_[j] = 1;  // an unchanged centroid keeps its similarities
    }

    /// Give every empty cluster the worst-served non-zero filter not used as a seed yet.
    /// Returns the number of clusters re-seeded.
    int64_t reseed(const std::vector<char>& empty) {
        const int64_t n_empty = std::count(empty.begin(), empty.end(), 1);
        if (n_empty == 0) return 0;
        std::vector<int64_t> cand;
        cand.reserve(static_cast<size_t>(n_nonzero_));
        for (int64_t i = 0; i < n_; ++i)
            if (nonzero_[i]) cand.push_back(i);
        const auto worse = [&](int64_t a, int64_t b) {
            return best_[a] < best_[b] || (best_[a] == best_[b] && a < b);
        };
        const int64_t m = std::min<int64_t>(n_empty, static_cast<int64_t>(cand.size()));
        std::partial_sort(cand.begin(), cand.begin() + m, cand.end(), worse);
        int64_t q = 0;
        for (int64_t j = 0; j < k_; ++j) {
            if (!empty[j]) continue;
            if (q < m) {
                src_[j] = cand[q];
                std::memcpy(centroid(j), row(cand[q++]), sizeof(float) * d_);
                moved_[j] = 1;
            }  // else: fewer directions than clusters, the centroid stays where it was
        }
        return q;
    }

    /// Each filter's cosine to its centroid as returned (in double: after an update step the
    /// assignment's similarities belong to the previous centroids).
    std::vector<float> own_cosines() {
        std::vector<float> own(static_cast<size_t>(n_));
#pragma omp parallel for num_threads(nt_) schedule(static) if (nt_ > 1)
        for (int64_t i = 0; i < n_; ++i) own[i] = static_cast<float>(dot_double(row(i), centroid(labels_[i]), d_));
        return own;
    }

    /// Per filter, against the representative r of its cluster, on the filters as given
    /// (in double): the cosine, and the relative residual |x_i - a x_r| / |x_i| of the
    /// least-squares multiple a = <x_i, x_r> / |x_r|^2 (0 for a representative or a zero
    /// filter). Summed directly, not as sqrt(1 - cos^2), which loses the small residuals
    /// of near-duplicates to cancellation.
    void rep_stats(const std::vector<int64_t>& rep, KMeansResult* r) const {
        r->rep_cosines.assign(static_cast<size_t>(n_), 0.0f);
        r->rep_residuals.assign(static_cast<size_t>(n_), 0.0f);
        // Cluster by cluster, so the representative's row is read from memory once and
        // from cache for its other members.
        std::vector<int64_t> start, order;
        group_by_label(labels_, &start, &order);
#pragma omp parallel num_threads(nt_) if (nt_ > 1)
        {
            // the filters' rows in place, or gathered from their blocks
            Buffer<float> ta(static_cast<size_t>(x_.blocks.size() > 1 ? d_ : 0)), tb(ta.size());
#pragma omp for schedule(dynamic, 16)
            for (int64_t j = 0; j < k_; ++j) {
                const int64_t q = rep[j];
                const float* b = x_.row(q, tb.data());
                const double bb = dot_double(b, b, d_), nb = std::sqrt(bb);  // once per cluster
                if (!(nb > 0.0)) continue;  // a zero representative: its members keep 0
                for (int64_t m = start[j]; m < start[j + 1]; ++m) {
                    const int64_t i = order[m];
                    const double na = norms_[i];
                    if (!(na > 0.0)) continue;
                    if (q == i) {
                        r->rep_cosines[i] = 1.0f;
                        continue;
                    }
                    const float* a = x_.row(i, ta.data());
                    const double ab = dot_double(a, b, d_);
                    r->rep_cosines[i] = static_cast<float>(ab / (na * nb));
                    r->rep_residuals[i] = static_cast<float>(std::sqrt(residual_sq(a, b, ab / bb, d_)) / na);
                }
            }
        }
    }

    /// The filters grouped by cluster, in index order within each: cluster j's members are
    /// order[start[j]..start[j + 1]).
    void group_by_label(const std::vector<int64_t>& labels, std::vector<int64_t>* start,
                        std::vector<int64_t>* order) const {
        start->assign(static_cast<size_t>(k_ + 1), 0);
        order->resize(static_cast<size_t>(n_));
        for (int64_t i = 0; i < n_; ++i) ++(*start)[labels[i] + 1];
        for (int64_t j = 0; j < k_; ++j) (*start)[j + 1] += (*start)[j];
        std::vector<int64_t> pos(start->begin(), start->end() - 1);
        for (int64_t i = 0; i < n_; ++i) (*order)[pos[labels[i]]++] = i;
    }

    /// Per cluster the member of highest cosine `own` to it; an empty cluster takes the
    /// closest filter not yet chosen.
    std::vector<int64_t> representatives(const std::vector<float>& own) {
        std::vector<int64_t> rep(static_cast<size_t>(k_), -1);
        std::vector<char> taken(static_cast<size_t>(n_), 0);
        for (int64_t i = 0; i < n_; ++i) {
            const int64_t j = labels_[i];
            if (rep[j] < 0 || own[i] > own[rep[j]]) rep[j] = i;
        }
        for (int64_t j = 0; j < k_; ++j)
            if (rep[j] >= 0) taken[rep[j]] = 1;
        std::vector<float> dots(static_cast<size_t>(n_));
        for (int64_t j = 0; j < k_; ++j) {
            if (rep[j] >= 0) continue;
            dots_of(centroid(j), 1, dots.data());
            int64_t b = -1;
            for (int64_t i = 0; i < n_; ++i)
                if (!taken[i] && (b < 0 || dots[i] > dots[b])) b = i;
            rep[j] = b;  // K <= n, so a free filter always exists
            taken[b] = 1;
        }
        return rep;
    }

    const Filters& x_;  // the filters as given (caller-owned, alive while the solver runs)
    int64_t n_, d_, k_;
    KMeansParams p_;
    int nt_;
    GemmKernel kernel_;
    Workspace& ws_;
    bool packed_ = kernel_ != GemmKernel::blas;
    Buffer<float> xn_;
    Buffer<float> xt_;                  // xn_^T on the BLAS path (see normalize_and_pack)
    std::vector<float> norms_;
    PackedRows xp_;
    std::vector<char> nonzero_;
    int64_t n_nonzero_ = 0;
    Buffer<float> c_;                   // K x d centroids (every row written by the seeding)
    Buffer<float> s_;
    std::vector<float> best_;
    std::vector<int64_t> labels_;
    Buffer<double> sum_;                // K x d member sums, as of sum_label_ (once sums_stored_)
    bool sums_built_ = false;           // sum_label_ and count_ describe a rebuild of the sums
    bool sums_stored_ = false;          // ... and sum_ holds them
    std::vector<int64_t> count_;        // members per cluster, as of sum_label_
    std::vector<int64_t> sum_label_;    // the labels the sums describe
    std::vector<char> moved_;           // centroids written since the last assignment
    /// where a centroid's similarities can be read: a filter index (the centroid is that
    /// filter), kMean (its members' normalised sum, inv_norm_ = 1 / |sum|) or kComputed
    static constexpr int64_t kMean = -1, kComputed = -2;
    std::vector<int64_t> src_;
    std::vector<double> inv_norm_;
    std::vector<int64_t> member_start_, member_order_;  // clusters' members (index_members)
    Buffer<float> gram_;                // X X^T while seeding and the first assignment need it
    bool gram_ready_ = false;           // gram_ holds this layer's X X^T (from seeding on)
    std::vector<float> dots_, cand_;    // candidate dots and rows when there is no Gram matrix
    mutable std::vector<double> lanes_; // partial sums of potentials()
    bool assigned_ = false;             // S^T holds the products of an earlier assignment
};

void check_params(const Filters& x, const KMeansParams& p, const std::string& what) {
    PYPRUNE_CHECK(p.k >= 1 && p.k <= x.rows, what, ": K must satisfy 1 <= K <= n = ", x.rows,
                  ", got K = ", p.k);
    PYPRUNE_CHECK(p.max_iter >= 0, what, ": max_iter must be >= 0, got ", p.max_iter);
    if (p.kernel) check_kernel(*p.kernel);
}

/// `p` with its kernel chosen (default_kernel() when unset): decided before any thread
/// starts, so a bad PYPRUNE_GEMM raises here.
KMeansParams resolved(KMeansParams p) {
    if (!p.kernel) p.kernel = default_kernel();
    return p;
}

}  // namespace

KMeansResult spherical_kmeans(const Filters& x, const KMeansParams& params, const float* init,
                              int threads) {
    return std::move(spherical_kmeans_batch({x}, {params}, {init}, threads).front());
}

std::vector<KMeansResult> spherical_kmeans_batch(const std::vector<Filters>& xs,
                                                 const std::vector<KMeansParams>& params,
                                                 const std::vector<const float*>& inits,
                                                 int threads) {
    const size_t L = xs.size();
    PYPRUNE_CHECK(params.size() == L, "one parameter set per layer: ", L, " layers, ",
                  params.size(), " parameter sets");
    PYPRUNE_CHECK(inits.empty() || inits.size() == L, "init: one entry per layer: ", L,
                  " layers, ", inits.size(), " inits");
    const int nt = resolve_threads(threads);
    auto name = [](size_t l) { return "weights[" + std::to_string(l) + "]"; };
    std::vector<KMeansParams> ps;
    ps.reserve(L);
    for (size_t l = 0; l < L; ++l) {
        check_shape(xs[l], name(l));
        check_params(xs[l], params[l], name(l));
        ps.push_back(resolved(params[l]));
    }
    std::vector<KMeansResult> out(L);
    std::vector<double> cost(L);
    double total = 0.0;
    for (size_t l = 0; l < L; ++l) {
        cost[l] = static_cast<double>(xs[l].rows) * static_cast<double>(params[l].k) *
                  static_cast<double>(xs[l].cols);
        total += cost[l];
    }
    std::vector<size_t> order(L);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cost[a] > cost[b]; });
    // A layer with at least 1/nt of the work would unbalance a one-thread-per-layer schedule:
    // it runs alone, rows split. The others run one per thread, largest first, which the
    // dynamic schedule balances; running them split instead (from 1/(4 nt) of the work on,
    // before) left a thread idle in every step that does not split (the seeding's draws, an
    // update that moves few filters): resnet152's k-means in prune 0.46 s against 0.50 s.
    std::vector<size_t> big, small;
    for (size_t l : order) {
        const bool is_big = nt > 1 && xs[l].rows >= 64 * nt && cost[l] * nt >= total;
        (is_big ? big : small).push_back(l);
    }
    auto init_of = [&](size_t l) { return inits.empty() ? nullptr : inits[l]; };
    std::vector<Workspace> spaces(static_cast<size_t>(nt));  // one per thread
    if (!big.empty()) {  // one block each for the largest of the big layers, not one per size met
        size_t xn = 0, nk = 0, nn = 0, packed = 0;
        for (size_t l : big) {
            const auto n = static_cast<size_t>(xs[l].rows), d = static_cast<size_t>(xs[l].cols),
                       k = static_cast<size_t>(ps[l].k), w = static_cast<size_t>(panel_width(*ps[l].kernel));
            xn = std::max(xn, n * d);
            nk = std::max(nk, n * k);
            if (n <= kGramMaxRows) nn = std::max(nn, n * n);
            if (*ps[l].kernel != GemmKernel::blas) packed = std::max(packed, (n + w - 1) / w * w * d);
        }
        Workspace& ws = spaces[0];
        ws.xn.reserve(xn);
        if (std::any_of(big.begin(), big.end(), [&](size_t l) { return *ps[l].kernel == GemmKernel::blas; }))
            ws.xt.reserve(xn);
        ws.s.reserve(nk);
        ws.gram.reserve(nn);
        ws.xp.data.reserve(packed);
    }
    // A layer's error (a non-finite value is found while its filters are normalised) is
    // kept, and the first layer's raised once every layer has run, as a check of the
    // values in layer order before any work would.
    std::vector<std::exception_ptr> errors(L);
    for (size_t l : big) {
        try {
            out[l] = Solver(xs[l], ps[l], nt, spaces[0], name(l)).run(init_of(l));
        } catch (...) {
            errors[l] = std::current_exception();
        }
    }
    const int64_t ns = static_cast<int64_t>(small.size());
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t q = 0; q < ns; ++q) {
        const size_t l = small[q];
        try {
            out[l] = Solver(xs[l], ps[l], 1, spaces[static_cast<size_t>(omp_get_thread_num())], name(l))
                         .run(init_of(l));
        } catch (...) {
            errors[l] = std::current_exception();
        }
    }
    for (const auto& e : errors)
        if (e) std::rethrow_exception(e);
    return out;
}

}  // namespace pyprune
