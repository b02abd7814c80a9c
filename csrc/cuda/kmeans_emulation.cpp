#include "kmeans_emulation.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "../core/buffer.h"
#include "../core/check.h"
#include "kmeans_jobs.h"
#include "kmeans_logic.h"

#ifdef __FAST_MATH__
#error "kmeans_emulation.cpp repeats the CPU's rounding: build it without -ffast-math"
#endif

namespace pyprune::device {

namespace {

/// The products kernel's tiles run on the host, thread by thread between its barriers.
void run_products_host(const ProductTask& t) {
    if (t.skip != nullptr && *t.skip != 0) return;
    const int64_t count = t.count != nullptr ? *t.count : t.m;
    struct Acc {
        float v[4][4];
    };
    std::vector<Acc> acc(kThreads), tot(kThreads);
    TileShared sh;
    for (int64_t idx = 0; idx < tiles_of(t); ++idx) {
        int64_t r0, c0;
        tile_origin(t, idx, &r0, &c0);
        if (r0 >= count) continue;
        for (int r = 0; r < kTile; ++r) sh.arow[r] = tile_row(t, count, r0, r);
        for (int tid = 0; tid < kThreads; ++tid)
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[tid].v[i][j] = tot[tid].v[i][j] = 0.0f;
        for (int64_t kb = 0; kb < t.d; kb += kDepth) {
            for (int tid = 0; tid < kThreads; ++tid) tile_load(t, c0, kb, tid, sh);
            for (int tid = 0; tid < kThreads; ++tid) tile_step(sh, kb, tid % 16, tid / 16, acc[tid].v, tot[tid].v);
        }
        for (int tid = 0; tid < kThreads; ++tid) tile_store(t, sh, c0, tid % 16, tid / 16, acc[tid].v, tot[tid].v);
    }
}

}  // namespace

std::vector<KMeansResult> spherical_kmeans_emulated(const std::vector<MatrixView>& xs,
                                                    const std::vector<KMeansParams>& params,
                                                    const std::vector<const float*>& inits) {
    PYPRUNE_CHECK(params.size() == xs.size() && (inits.empty() || inits.size() == xs.size()),
                  "one parameter set and init per layer");
    std::vector<KMeansResult> out(xs.size());
    for (size_t l = 0; l < xs.size(); ++l) {
        const std::string what = "weights[" + std::to_string(l) + "]";
        const MatrixView& x = xs[l];
        const KMeansParams& p = params[l];
        check_shape(x, what.c_str());
        PYPRUNE_CHECK(p.k >= 1 && p.k <= x.rows, what, ": K must satisfy 1 <= K <= n = ", x.rows, ", got K = ", p.k);
        PYPRUNE_CHECK(p.max_iter >= 0, what, ": max_iter must be >= 0, got ", p.max_iter);
        const float* init = inits.empty() ? nullptr : inits[l];
        for (int64_t j = 0; init != nullptr && j < p.k; ++j) {
            const double s = sum_sq(init + j * x.cols, x.cols);
            PYPRUNE_CHECK(std::isfinite(s) && s > 0.0, "init: centroid ", j, " must be finite and non-zero (squared norm ",
                          s, ")");
        }
        const int64_t n = x.rows, d = x.cols, k = p.k;
        KMeansResult r;
        r.n = n;
        r.d = d;
        r.k = k;
        r.centroids.resize(static_cast<size_t>(k * d));
        r.labels.resize(static_cast<size_t>(n));
        r.representatives.resize(static_cast<size_t>(k));
        r.cosines.resize(static_cast<size_t>(n));
        r.norms.resize(static_cast<size_t>(n));
        r.rep_cosines.resize(static_cast<size_t>(n));
        r.rep_residuals.resize(static_cast<size_t>(n));
        std::vector<double> objective(static_cast<size_t>(p.max_iter + 1));
        std::vector<int64_t> stats(static_cast<size_t>(4 * (p.max_iter + 1))), info(2);
        Job J;
        J.x = x.data;
        J.init = init;
        J.n = n;
        J.d = d;
        J.k = k;
        J.trials = trials_for(k);
        J.use_gram = gram_for(n, k, init != nullptr) ? 1 : 0;
        J.max_iter = p.max_iter;
        J.early_stop = p.early_stop ? 1 : 0;
        J.reuse = p.reuse ? 1 : 0;
        J.seed = p.seed;
        J.c = r.centroids.data();
        J.labels = r.labels.data();
        J.reps = r.representatives.data();
        J.cosines = r.cosines.data();
        J.norms = r.norms.data();
        J.rep_cos = r.rep_cosines.data();
        J.rep_res = r.rep_residuals.data();
        J.objective = objective.data();
        J.stats = stats.data();
        J.info = info.data();
        Buffer<char> scratch(place_scratch(&J, nullptr));
        place_scratch(&J, scratch.data());
        for (int64_t i = 0; i < n; ++i)
            if (!normalize_row(J, i)) raise_non_finite(x.data + i * d, d, i, what);
        std::vector<int64_t> state(kStateSize), plist(static_cast<size_t>(k));
        J.state = state.data();
        J.plist = plist.data();
        if (J.use_gram) run_products_host(gram_task(J));
        Ctl ctl;
        BlockSolver solver(J, ctl);  // the phases in the order the GPU's kernels run them
        solver.start();
        for (int it = 0; it < std::max(1, p.max_iter) && !state[kDone]; ++it) {
            solver.prepare();
            run_products_host(assign_task(J));
            solver.finish_assign(it, p.max_iter > 0);
        }
        solver.finish();
        r.n_iter = static_cast<int>(info[0]);
        const int n_obj = p.max_iter == 0 ? 1 : r.n_iter;
        r.objective.assign(objective.begin(), objective.begin() + n_obj);
        for (int it = 0; it < r.n_iter; ++it) {
            IterationStats st;
            st.changed = stats[4 * it];
            st.moved = stats[4 * it + 1];
            st.reseeded = stats[4 * it + 2];
            st.recomputed = stats[4 * it + 3];
            r.stats.push_back(st);
        }
        out[l] = std::move(r);
    }
    return out;
}

}  // namespace pyprune::device
