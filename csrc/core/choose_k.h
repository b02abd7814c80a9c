// Automatic cluster count: the knee of the k-means distortion curve.
#pragma once

#include <cstdint>
#include <vector>

#include "matrix.h"

namespace pyprune {

/// Knee of a decreasing curve by the maximum-distance-to-chord rule (the Kneedle idea):
/// both axes are scaled to [0, 1] and the point farthest below the straight line joining
/// the first and the last point is the knee. It needs no tuning constant, does not depend
/// on the units of either axis, and for a convex decreasing cost (k-means distortion
/// against K) it picks the point after which extra clusters buy the least.
/// Returns the knee's index into `xs` and its depth: how far it lies below the chord on the
/// scaled axes. When no point lies below it (a flat or concave curve) the index is 0 (the
/// smallest K) and the depth 0. The last point is never the knee (it is on the chord).
struct Knee {
    int64_t index = 0;
    double depth = 0.0;
};
Knee knee_point(const std::vector<double>& xs, const std::vector<double>& ys);

/// Automatic cluster count per layer: for every layer and every K in `ks[l]`, run
/// spherical k-means and take the final distortion sum(1 - cos); the knee of the
/// log-distortion curve (relative gains; floored at 1e-3 of the first value so K = n with
/// zero distortion does not dominate, and at 1e-5 per filter, float noise) is the chosen K.
/// A curve at that noise from its first K on has every filter on that many directions: it
/// gets its first K. A knee shallower than `min_depth` is no elbow: the layer then gets its
/// largest candidate (no K is clearly enough; 0 keeps every knee). `curves` (if not null)
/// receives the distortions, per layer per K.
std::vector<int64_t> choose_k(const std::vector<MatrixView>& xs,
                              const std::vector<std::vector<int64_t>>& ks, int max_iter,
                              uint64_t seed, int threads, double min_depth,
                              std::vector<std::vector<double>>* curves);

}  // namespace pyprune
