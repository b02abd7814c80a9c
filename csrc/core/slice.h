// Structured weight slicing: gather kept indices along several dims of many tensors at once.
#pragma once

#include <cstdint>
#include <vector>

namespace pyprune {

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
};

/// Destination shape of a job.
std::vector<int64_t> gather_shape(const GatherJob& job);

/// Run every job; contiguous runs are copied with memcpy, work is split over threads.
/// Indices are checked against the shape before anything is written.
void gather_batch(const std::vector<GatherJob>& jobs, int threads);

}  // namespace pyprune
