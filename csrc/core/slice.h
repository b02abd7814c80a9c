// Structured weight slicing: gather kept indices along several dims of many tensors at once.
#pragma once

#include <cstdint>
#include <vector>

namespace pyprune {

/// Dropped slices added onto kept ones after the copy (weight merging): along `dim`, which
/// must have an index list, output position p receives, in order, scale[q] * the source
/// slice at index src[q] (its other dims gathered like the output's) for q in
/// start[p]..start[p + 1]. Each product is rounded to float, then added.
struct GatherFold {
    int64_t dim = 0;
    std::vector<int64_t> start;  // one more than the dim's kept indices
    std::vector<int64_t> src;
    std::vector<float> scale;
};

/// One tensor to slice: dst = src[index[0], index[1], ...] (outer product of the indices).
struct GatherJob {
    /// source tensor, contiguous row-major, any element type
    const void* src = nullptr;
    /// destination, contiguous, shape = source shape with each indexed dim shrunk
    void* dst = nullptr;
    /// bytes per element
    int64_t elem_size = 4;
    /// source shape
    std::vector<int64_t> shape;
    /// per dim the kept indices in output order; an empty list keeps the whole dim
    std::vector<std::vector<int64_t>> index;
    /// weight merging (float32 tensors only), see GatherFold
    std::vector<GatherFold> folds;
};

/// Destination shape of a job.
std::vector<int64_t> gather_shape(const GatherJob& job);

/// Run every job; contiguous runs are copied with memcpy, work is split over threads.
/// Indices are checked against the shape before anything is written.
void gather_batch(const std::vector<GatherJob>& jobs, int threads);

}  // namespace pyprune
