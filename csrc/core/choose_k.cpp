#include "choose_k.h"

#include <algorithm>
#include <cmath>

#include "check.h"
#include "kmeans.h"

namespace pyprune {

Knee knee_point(const std::vector<double>& xs, const std::vector<double>& ys) {
    PYPRUNE_CHECK(xs.size() == ys.size() && !xs.empty(), "knee: need matching non-empty curves, got ",
                  xs.size(), " and ", ys.size(), " points");
    const size_t m = xs.size();
    if (m <= 2) return {};
    const auto [ymin, ymax] = std::minmax_element(ys.begin(), ys.end());
    const double x0 = xs.front(), xr = xs.back() - xs.front();
    const double yr = *ymax - *ymin;
    if (!(xr > 0.0) || !(yr > 0.0)) return {};
    const double y_first = (ys.front() - *ymin) / yr, y_last = (ys.back() - *ymin) / yr;
    Knee best;
    for (size_t i = 0; i < m; ++i) {
        const double xn = (xs[i] - x0) / xr;
        const double yn = (ys[i] - *ymin) / yr;
        const double chord = y_first + (y_last - y_first) * xn;
        const double gap = chord - yn;
        if (gap > best.depth) best = {static_cast<int64_t>(i), gap};
    }
    return best;
}

std::vector<int64_t> choose_k(const std::vector<MatrixView>& xs,
                              const std::vector<std::vector<int64_t>>& ks, int max_iter,
                              uint64_t seed, int threads, double min_depth,
                              std::vector<std::vector<double>>* curves) {
    PYPRUNE_CHECK(min_depth >= 0.0 && min_depth < 1.0, "choose_k: min_depth must be in [0, 1), got ", min_depth);
    PYPRUNE_CHECK(xs.size() == ks.size(), "choose_k: one K range per layer: ", xs.size(),
                  " layers, ", ks.size(), " ranges");
    std::vector<Filters> jobs;
    std::vector<KMeansParams> params;
    for (size_t l = 0; l < xs.size(); ++l) {
        PYPRUNE_CHECK(!ks[l].empty(), "choose_k: layer ", l, " has an empty K range");
        for (size_t q = 0; q < ks[l].size(); ++q) {
            PYPRUNE_CHECK(q == 0 || ks[l][q] > ks[l][q - 1], "choose_k: ks must be increasing, got ",
                          ks[l][q - (q > 0 ? 1 : 0)], " then ", ks[l][q]);
            KMeansParams p;
            p.k = ks[l][q];
            p.max_iter = max_iter;
            p.early_stop = true;
            p.seed = seed;
            jobs.push_back(xs[l]);
            params.push_back(p);
        }
    }
    const auto results = spherical_kmeans_batch(jobs, params, {}, threads);
    std::vector<int64_t> chosen(xs.size());
    if (curves) curves->assign(xs.size(), {});
    size_t r = 0;
    for (size_t l = 0; l < xs.size(); ++l) {
        std::vector<double> kx, dist;
        for (size_t q = 0; q < ks[l].size(); ++q, ++r) {
            kx.push_back(static_cast<double>(ks[l][q]));
            dist.push_back(static_cast<double>(results[r].n) - results[r].objective.back());
        }
        if (curves) (*curves)[l] = dist;
        // Float rounding leaves each filter's 1 - cos within a few 1e-7 of its true value,
        // so a distortion under 1e-5 per filter is zero: every filter lies on one of the K
        // directions (exact duplicates up to scale). A curve there from its first K on is
        // flat for that reason, not for want of structure: its first K is the answer.
        const double noise = 1e-5 * static_cast<double>(xs[l].rows);
        if (dist.front() <= noise) {
            chosen[l] = ks[l].front();
            continue;
        }
        // The knee is taken on log-distortion: what matters is the relative gain of one
        // more cluster. The floor keeps an exact zero (K = n) from dominating the scale, and
        // float noise from making a knee of its own.
        const double floor = std::max(1e-3 * dist.front(), noise);
        std::vector<double> logd(dist.size());
        for (size_t q = 0; q < dist.size(); ++q) logd[q] = std::log(std::max(dist[q], floor));
        const Knee knee = knee_point(kx, logd);
        chosen[l] = knee.depth < min_depth ? ks[l].back() : ks[l][static_cast<size_t>(knee.index)];
    }
    return chosen;
}

}  // namespace pyprune
