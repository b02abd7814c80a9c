// Scratch buffers for the large per-layer arrays of the k-means (normalised and packed
// filters, the Gram matrix, similarities, member sums).
//
// A std::vector zero-fills what resize() adds, and the kernel zero-fills every fresh page
// again when it is first touched: for a 1024 x 9728 layer (resnet152's widest residual
// group) that is a pass over 40 MB before the first useful write. Buffer<T> leaves new
// elements uninitialised; every user writes an entry before reading it. (Transparent huge
// pages were tried for these blocks: with the common `defrag=madvise` setting the first
// fault of a run stalled in compaction for half a second, so they are not asked for.)
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <utility>
#include <vector>

namespace pyprune {

/// std::allocator whose value-initialising construct() default-initialises instead (no
/// zero-fill for float and double).
template <class T>
struct UninitAllocator : std::allocator<T> {
    using value_type = T;
    template <class U>
    struct rebind {
        using other = UninitAllocator<U>;
    };
    UninitAllocator() noexcept = default;
    template <class U>
    UninitAllocator(const UninitAllocator<U>&) noexcept {}

    template <class U, class... Args>
    void construct(U* p, Args&&... args) {
        ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
    template <class U>
    void construct(U* p) noexcept {
        ::new (static_cast<void*>(p)) U;  // default-initialised: no zero-fill
    }
};

/// A vector whose resize() leaves new elements uninitialised (see UninitAllocator).
template <class T>
using Buffer = std::vector<T, UninitAllocator<T>>;

}  // namespace pyprune
