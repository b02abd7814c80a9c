// Host-side layout of the k-means jobs the block solver (kmeans_logic.h) runs: which layers
// get a Gram matrix, how many k-means++ candidates, and where each job's scratch lives in
// one allocation. Shared by the CUDA build and the host emulation, so both decide alike.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kmeans_logic.h"
#include "products_tile.h"

namespace pyprune::device {

/// k-means++ candidates per step: 2 + ln K (the CPU solver's count, from the host's log).
inline int64_t trials_for(int64_t k) { return 2 + static_cast<int64_t>(std::log(static_cast<double>(k))); }

/// Whether the CPU solver computes the Gram matrix for this layer (Solver::use_gram, which
/// only the k-means++ seeding asks: never with given starting centroids).
inline bool gram_for(int64_t n, int64_t k, bool has_init) {
    return !has_init && n <= kGramMaxRows && 2 * k * (trials_for(k) + 2) >= n;
}

/// Bytes of a job's scratch, and (with `base`) the scratch pointers of `J` placed in it.
/// J.n, J.d, J.k and J.use_gram must be set.
inline size_t place_scratch(Job* J, char* base) {
    const int64_t n = J->n, d = J->d, k = J->k;
    size_t off = 0;
    auto take = [&](auto** p, int64_t count) {
        using T = std::remove_pointer_t<std::remove_reference_t<decltype(*p)>>;
        off = (off + 255) / 256 * 256;
        if (base != nullptr) *p = reinterpret_cast<T*>(base + off);
        off += sizeof(T) * static_cast<size_t>(count > 0 ? count : 1);
    };
    take(&J->xn, n * d);
    take(&J->gram, J->use_gram ? n * n : 1);
    take(&J->s, k * n);
    take(&J->best, n);
    take(&J->dots, kMaxTrials * n);
    take(&J->sum, k * d);
    take(&J->inv_norm, k);
    take(&J->mind, n);
    take(&J->prefix, n);
    take(&J->sum_label, n);
    take(&J->mstart, k + 1);
    take(&J->morder, n);
    take(&J->pos, k);
    take(&J->src, k);
    take(&J->list, n);
    take(&J->nonzero, n);
    take(&J->used, n);
    take(&J->moved, k);
    take(&J->rowflag, k);
    take(&J->touched, k);
    take(&J->empty, k);
    take(&J->taken, n);
    return (off + 255) / 256 * 256;
}

/// The Gram matrix xn xn^T of a job (use_gram).
inline ProductTask gram_task(const Job& J) {
    ProductTask g;
    g.a = g.b = J.xn;
    g.m = g.n = J.n;
    g.d = J.d;
    g.out = J.gram;
    g.sym = 1;
    return g;
}

/// The rows of S^T = C xn^T an assignment multiplies out: plist, state[kPm] of them; the
/// task is skipped once the job is done.
inline ProductTask assign_task(const Job& J) {
    ProductTask p;
    p.a = J.c;
    p.rows = J.plist;
    p.count = J.state + kPm;
    p.skip = J.state + kDone;
    p.m = J.k;
    p.b = J.xn;
    p.n = J.n;
    p.d = J.d;
    p.out = J.s;
    return p;
}

}  // namespace pyprune::device
