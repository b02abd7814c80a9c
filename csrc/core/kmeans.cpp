#include "kmeans.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <numeric>

#include "blas.h"
#include "check.h"
#include "gemm.h"
#include "similarity.h"

namespace pyprune {

namespace {

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

/// The large buffers of a layer's clustering, kept by one thread from one layer to the next
/// of a batch: a layer then reuses pages it has touched already instead of faulting in (and
/// zero-filling) fresh ones. On densenet201 that was a tenth of the time outside the products.
struct Workspace {
    std::vector<float> xn, s;
    PackedRows xp;
};

/// The state of one layer's clustering. `nt` threads split each step's rows.
class Solver {
public:
    /// `p.kernel` must be set (see resolved()). The buffers of `ws` are borrowed until the
    /// solver is destroyed.
    Solver(const MatrixView& x, const KMeansParams& p, int nt, Workspace& ws)
        : n_(x.rows), d_(x.cols), k_(p.k), p_(p), nt_(nt), kernel_(*p.kernel), ws_(ws),
          xn_(std::move(ws.xn)), xp_(std::move(ws.xp)), nonzero_(static_cast<size_t>(n_)),
          c_(static_cast<size_t>(k_ * d_)), s_(std::move(ws.s)),
          best_(static_cast<size_t>(n_)), labels_(static_cast<size_t>(n_), -1),
          moved_(static_cast<size_t>(k_), 1) {
        xn_.resize(static_cast<size_t>(n_ * d_));
        s_.resize(static_cast<size_t>(n_ * k_));  // every entry is written before it is read
        normalize_rows(x, xn_.data(), nt_);
        if (packed_) pack_rows(xn_.data(), n_, d_, d_, kernel_, &xp_);  // X never changes: packed once
        for (int64_t i = 0; i < n_; ++i) {
            const float* r = row(i);
            bool nz = false;
            for (int64_t j = 0; j < d_ && !nz; ++j) nz = r[j] != 0.0f;
            nonzero_[i] = nz ? 1 : 0;
            n_nonzero_ += nz ? 1 : 0;
        }
    }

    ~Solver() {
        ws_.xn = std::move(xn_);
        ws_.xp = std::move(xp_);
        ws_.s = std::move(s_);
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
        r.centroids = std::move(c_);
        return r;
    }

private:
    const float* row(int64_t i) const { return xn_.data() + i * d_; }
    float* centroid(int64_t j) { return c_.data() + j * d_; }

    void set_init(const float* init) {
        for (int64_t j = 0; j < k_; ++j) {
            const float* src = init + j * d_;
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int64_t t = 0; t < d_; ++t) s += static_cast<double>(src[t]) * src[t];
            PYPRUNE_CHECK(std::isfinite(s) && s > 0.0, "init: centroid ", j,
                          " must be finite and non-zero (squared norm ", s, ")");
            const float inv = static_cast<float>(1.0 / std::sqrt(s));
            for (int64_t t = 0; t < d_; ++t) centroid(j)[t] = src[t] * inv;
        }
    }

    void set_basis(int64_t j) {
        std::fill(centroid(j), centroid(j) + d_, 0.0f);
        centroid(j)[j % d_] = 1.0f;
    }

    /// dots[i] = <x_i, v> for all rows, rows split over the threads.
    void dots_with(const float* v, float* dots) const {
        parallel_rows(n_, parts(), 1, [&](int, int64_t lo, int64_t hi) {
            blas::gemv(hi - lo, d_, xn_.data() + lo * d_, d_, v, dots + lo);
        });
    }

    /// out[n x m] = X * V^T for m candidate directions V (m x d), rows split over threads.
    void dots_with_many(const float* v, int64_t m, float* out) const {
        parallel_rows(n_, parts(), 1, [&](int, int64_t lo, int64_t hi) {
            blas::gemm_nt(hi - lo, m, d_, xn_.data() + lo * d_, d_, v, d_, out + lo * m, m);
        });
    }

    /// Greedy k-means++ with the cosine distance 1 - cos (half the squared chord length):
    /// each step samples 2 + ln(K) candidates in proportion to their distance to the
    /// nearest chosen seed and keeps the one that lowers the total distance most (the
    /// variant scikit-learn uses; plain k-means++ falls into poor local optima far more
    /// often on filters with real cluster structure).
    void kmeanspp() {
        if (n_nonzero_ == 0) {
            for (int64_t j = 0; j < k_; ++j) set_basis(j);
            return;
        }
        Rng rng(p_.seed);
        const int64_t trials = 2 + static_cast<int64_t>(std::log(static_cast<double>(k_)));
        std::vector<double> mind(static_cast<size_t>(n_));
        std::vector<char> used(static_cast<size_t>(n_), 0);
        std::vector<float> cand(static_cast<size_t>(trials * d_));
        std::vector<float> dots(static_cast<size_t>(n_ * trials));
        std::vector<int64_t> picks;
        for (int64_t i = 0; i < n_; ++i) mind[i] = nonzero_[i] ? 2.0 : 0.0;
        for (int64_t j = 0; j < k_; ++j) {
            picks.clear();
            const double total = std::accumulate(mind.begin(), mind.end(), 0.0);
            if (total > 0.0) {
                const int64_t m = j == 0 ? 1 : trials;  // the first seed: one uniform draw
                for (int64_t t = 0; t < m; ++t) {
                    const double target = rng.uniform() * total;
                    double acc = 0.0;
                    int64_t pick = -1;
                    for (int64_t i = 0; i < n_; ++i) {
                        if (mind[i] <= 0.0) continue;
                        acc += mind[i];
                        pick = i;
                        if (acc > target) break;
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
            for (int64_t t = 0; t < m; ++t)
                std::memcpy(cand.data() + t * d_, row(picks[t]), sizeof(float) * d_);
            const bool last = j + 1 == k_;
            if (m == 1 && last) {
                std::memcpy(centroid(j), cand.data(), sizeof(float) * d_);
                break;
            }
            dots_with_many(cand.data(), m, dots.data());
            int64_t best_t = 0;
            if (m > 1) {
                double best_pot = std::numeric_limits<double>::infinity();
                for (int64_t t = 0; t < m; ++t) {
                    double pot = 0.0;
                    for (int64_t i = 0; i < n_; ++i) {
                        if (mind[i] <= 0.0) continue;
                        const double dist = std::max(0.0, 1.0 - static_cast<double>(dots[i * m + t]));
                        pot += std::min(mind[i], dist);
                    }
                    if (pot < best_pot) {
                        best_pot = pot;
                        best_t = t;
                    }
                }
            }
            used[picks[best_t]] = 1;
            std::memcpy(centroid(j), cand.data() + best_t * d_, sizeof(float) * d_);
            if (last) break;
            for (int64_t i = 0; i < n_; ++i) {
                if (!nonzero_[i] || used[i]) {
                    mind[i] = 0.0;
                    continue;
                }
                const double dist = std::max(0.0, 1.0 - static_cast<double>(dots[i * m + best_t]));
                mind[i] = std::min(mind[i], dist);
            }
        }
    }

    /// Assignment of filters lo..hi. The similarities are computed transposed,
    /// S^T[K x n] = C X^T (this layout runs measurably closer to the BLAS peak for
    /// these shapes), then a column-wise argmax sweeps S^T row by row (vectorised).
    /// With `moved` (m < K centroid indices, their rows packed in `cm`), only those rows
    /// of S^T are recomputed; the others still hold the products with unchanged centroids.
    void assign_rows(int64_t lo, int64_t hi, const std::vector<int64_t>* moved, const float* cm,
                     double* obj, int64_t* changed) {
        if (hi <= lo) return;
        const int64_t w = hi - lo;
        float* st = s_.data() + lo;  // column block lo..hi of the K x n matrix
        if (moved == nullptr) {
            products(k_, c_.data(), lo, hi, st, n_);
        } else if (!moved->empty()) {
            const int64_t m = static_cast<int64_t>(moved->size());
            std::vector<float> part(static_cast<size_t>(m * w));
            products(m, cm, lo, hi, part.data(), w);
            for (int64_t q = 0; q < m; ++q)
                std::memcpy(st + (*moved)[q] * n_, part.data() + q * w, sizeof(float) * w);
        }
        float* best = best_.data() + lo;
        std::vector<int32_t> arg(static_cast<size_t>(w), 0);
        int32_t* a = arg.data();
        std::memcpy(best, st, sizeof(float) * w);
        for (int64_t j = 1; j < k_; ++j) {
            const float* r = st + j * n_;
            const int32_t jj = static_cast<int32_t>(j);
#pragma omp simd
            for (int64_t i = 0; i < w; ++i) {
                const bool gt = r[i] > best[i];
                best[i] = gt ? r[i] : best[i];
                a[i] = gt ? jj : a[i];
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

    /// out[m x (hi - lo)] = A[m x d] * X[lo:hi]^T on the run's kernel (packed X unless blas).
    void products(int64_t m, const float* a, int64_t lo, int64_t hi, float* out, int64_t ldo) const {
        gemm_rows(m, a, d_, xn_.data(), packed_ ? &xp_ : nullptr, d_, lo, hi, out, ldo);
    }

    /// Threads to split the filters over: one for small layers.
    int parts() const { return nt_ <= 1 || n_ < 64 ? 1 : nt_; }

    /// Filters per split unit: whole panels for the packed kernel.
    int64_t grain() const { return packed_ ? xp_.panel : 1; }

    /// Assignment step; `recomputed` receives the rows of S^T computed anew.
    double assign(int64_t* changed, int64_t* recomputed) {
        // Which rows of S^T must be recomputed: all of them the first time, when reuse is
        // off, or when most centroids moved (one full product is then cheaper).
        std::vector<int64_t> moved;
        std::vector<float> cm;
        const std::vector<int64_t>* part = nullptr;
        if (p_.reuse && assigned_) {
            for (int64_t j = 0; j < k_; ++j)
                if (moved_[j]) moved.push_back(j);
            const int64_t m = static_cast<int64_t>(moved.size());
            if (m * 4 <= k_ * 3) {
                cm.resize(static_cast<size_t>(m * d_));
                for (int64_t q = 0; q < m; ++q)
                    std::memcpy(cm.data() + q * d_, centroid(moved[q]), sizeof(float) * d_);
                part = &moved;
            }
        }
        *recomputed = part != nullptr ? static_cast<int64_t>(moved.size()) : k_;
        const int np = parts();
        std::vector<double> objs(static_cast<size_t>(np), 0.0);
        std::vector<int64_t> chs(static_cast<size_t>(np), 0);
        parallel_rows(n_, np, grain(), [&](int t, int64_t lo, int64_t hi) {
            assign_rows(lo, hi, part, cm.data(), &objs[t], &chs[t]);
        });
        assigned_ = true;
        std::fill(moved_.begin(), moved_.end(), 0);
        *changed = std::accumulate(chs.begin(), chs.end(), int64_t{0});
        return std::accumulate(objs.begin(), objs.end(), 0.0);  // in part order: deterministic
    }

    /// Centroid step: each centroid becomes its members' normalised sum. The per-cluster
    /// sums are kept (in double) between iterations: when few filters changed cluster only
    /// those are moved from one sum to the other, otherwise the sums are rebuilt. The
    /// order of the additions never depends on the thread count.
    /// `moved` and `reseeded` receive how many centroids moved and were re-seeded.
    void update(int64_t changed, int64_t* moved, int64_t* reseeded) {
        const bool full = sum_.empty() || changed * 4 > n_;
        std::vector<char> touched(static_cast<size_t>(k_), 0);
        if (full) {
            rebuild_sums();
            std::fill(touched.begin(), touched.end(), 1);
        } else {
            for (int64_t i = 0; i < n_; ++i) {
                const int64_t from = sum_label_[i], to = labels_[i];
                if (from == to) continue;
                const float* r = row(i);
                double* a = sum_.data() + from * d_;
                double* b = sum_.data() + to * d_;
#pragma omp simd
                for (int64_t t = 0; t < d_; ++t) {
                    a[t] -= r[t];
                    b[t] += r[t];
                }
                --count_[from];
                ++count_[to];
                touched[from] = touched[to] = 1;
                sum_label_[i] = to;
            }
        }
        std::vector<char> empty(static_cast<size_t>(k_), 0);
        const int nt = nt_;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16) if (nt > 1 && full)
        for (int64_t j = 0; j < k_; ++j) {
            if (count_[j] == 0) {
                empty[j] = 1;
                continue;
            }
            if (!touched[j]) continue;
            const double* a = sum_.data() + j * d_;
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int64_t t = 0; t < d_; ++t) s += a[t] * a[t];
            if (!(s > 1e-24)) continue;  // members cancel out: any direction is as good, keep it
            const double inv = 1.0 / std::sqrt(s);
            float* c = centroid(j);
            bool differs = false;
            for (int64_t t = 0; t < d_; ++t) {
                const float v = static_cast<float>(a[t] * inv);
                differs |= v != c[t];
                c[t] = v;
            }
            if (differs) moved_[j] = 1;  // an unchanged centroid keeps its similarities
        }
        *reseeded = reseed(empty);
        *moved = std::count(moved_.begin(), moved_.end(), char{1});
    }

    void rebuild_sums() {
        std::vector<int64_t> start(static_cast<size_t>(k_ + 1), 0), order(static_cast<size_t>(n_));
        for (int64_t i = 0; i < n_; ++i) ++start[labels_[i] + 1];
        for (int64_t j = 0; j < k_; ++j) start[j + 1] += start[j];
        {
            std::vector<int64_t> pos(start.begin(), start.end() - 1);
            for (int64_t i = 0; i < n_; ++i) order[pos[labels_[i]]++] = i;
        }
        sum_.assign(static_cast<size_t>(k_ * d_), 0.0);
        count_.assign(static_cast<size_t>(k_), 0);
        sum_label_ = labels_;
        const int nt = nt_;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16) if (nt > 1)
        for (int64_t j = 0; j < k_; ++j) {
            double* a = sum_.data() + j * d_;
            count_[j] = start[j + 1] - start[j];
            for (int64_t q = start[j]; q < start[j + 1]; ++q) {
                const float* r = row(order[q]);
#pragma omp simd
                for (int64_t t = 0; t < d_; ++t) a[t] += r[t];
            }
        }
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
        for (int64_t i = 0; i < n_; ++i) {
            const float* r = row(i);
            const float* c = centroid(labels_[i]);
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int64_t t = 0; t < d_; ++t) s += static_cast<double>(r[t]) * c[t];
            own[i] = static_cast<float>(s);
        }
        return own;
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
            dots_with(centroid(j), dots.data());
            int64_t b = -1;
            for (int64_t i = 0; i < n_; ++i)
                if (!taken[i] && (b < 0 || dots[i] > dots[b])) b = i;
            rep[j] = b;  // K <= n, so a free filter always exists
            taken[b] = 1;
        }
        return rep;
    }

    int64_t n_, d_, k_;
    KMeansParams p_;
    int nt_;
    GemmKernel kernel_;
    Workspace& ws_;
    bool packed_ = kernel_ != GemmKernel::blas;
    std::vector<float> xn_;
    PackedRows xp_;
    std::vector<char> nonzero_;
    int64_t n_nonzero_ = 0;
    std::vector<float> c_, s_, best_;
    std::vector<int64_t> labels_;
    std::vector<double> sum_;           // K x d member sums, as of sum_label_
    std::vector<int64_t> count_;        // members per cluster, as of sum_label_
    std::vector<int64_t> sum_label_;    // the labels the sums describe
    std::vector<char> moved_;           // centroids written since the last assignment
    bool assigned_ = false;             // S^T holds the products of an earlier assignment
};

void check_params(const MatrixView& x, const KMeansParams& p, const char* what) {
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

KMeansResult spherical_kmeans(const MatrixView& x, const KMeansParams& params, const float* init,
                              int threads) {
    validate(x, "weights");
    check_params(x, params, "weights");
    Workspace ws;
    Solver solver(x, resolved(params), resolve_threads(threads), ws);
    return solver.run(init);
}

std::vector<KMeansResult> spherical_kmeans_batch(const std::vector<MatrixView>& xs,
                                                 const std::vector<KMeansParams>& params,
                                                 const std::vector<const float*>& inits,
                                                 int threads) {
    const size_t L = xs.size();
    PYPRUNE_CHECK(params.size() == L, "one parameter set per layer: ", L, " layers, ",
                  params.size(), " parameter sets");
    PYPRUNE_CHECK(inits.empty() || inits.size() == L, "init: one entry per layer: ", L,
                  " layers, ", inits.size(), " inits");
    std::vector<KMeansParams> ps;
    ps.reserve(L);
    for (size_t l = 0; l < L; ++l) {
        const std::string what = "weights[" + std::to_string(l) + "]";
        validate(xs[l], what.c_str());
        check_params(xs[l], params[l], what.c_str());
        ps.push_back(resolved(params[l]));
    }
    const int nt = resolve_threads(threads);
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
    // Layers that would unbalance a one-thread-per-layer schedule run alone, rows split.
    std::vector<size_t> big, small;
    for (size_t l : order) {
        const bool is_big = nt > 1 && xs[l].rows >= 64 * nt && cost[l] * 4.0 * nt >= total;
        (is_big ? big : small).push_back(l);
    }
    auto init_of = [&](size_t l) { return inits.empty() ? nullptr : inits[l]; };
    std::vector<Workspace> spaces(static_cast<size_t>(nt));  // one per thread
    for (size_t l : big) out[l] = Solver(xs[l], ps[l], nt, spaces[0]).run(init_of(l));

    std::exception_ptr error;
    const int64_t ns = static_cast<int64_t>(small.size());
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t q = 0; q < ns; ++q) {
        const size_t l = small[q];
        try {
            out[l] = Solver(xs[l], ps[l], 1, spaces[static_cast<size_t>(omp_get_thread_num())]).run(init_of(l));
        } catch (...) {
#pragma omp critical
            error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);
    return out;
}

}  // namespace pyprune
