#include "slice.h"

#include <algorithm>
#include <cstring>

#include "check.h"
#include "matrix.h"

namespace pyprune {

std::vector<int64_t> gather_shape(const GatherJob& job) {
    std::vector<int64_t> out = job.shape;
    for (size_t dim = 0; dim < job.index.size() && dim < out.size(); ++dim)
        if (!job.index[dim].empty()) out[dim] = static_cast<int64_t>(job.index[dim].size());
    return out;
}

namespace {

struct Task {
    size_t job;
    int64_t lo, hi;  // range of outer (multi-)indices
};

struct Plan {
    int64_t last = -1;   // last indexed dim
    int64_t block = 0;   // bytes copied per outer index
    int64_t outer = 1;   // number of outer indices
    std::vector<int64_t> dshape, sstride;  // dims 0..last: dst extents, src strides (bytes)
};

Plan make_plan(const GatherJob& job) {
    Plan p;
    const int64_t nd = static_cast<int64_t>(job.shape.size());
    for (int64_t dim = 0; dim < static_cast<int64_t>(job.index.size()) && dim < nd; ++dim)
        if (!job.index[dim].empty()) p.last = dim;
    int64_t inner = job.elem_size;
    for (int64_t dim = nd - 1; dim > p.last; --dim) inner *= job.shape[dim];
    p.block = inner;
    const auto ds = gather_shape(job);
    p.dshape.assign(ds.begin(), ds.begin() + (p.last + 1));
    p.sstride.assign(static_cast<size_t>(p.last + 1), 0);
    int64_t stride = inner;
    for (int64_t dim = p.last; dim >= 0; --dim) {
        p.sstride[dim] = stride;
        stride *= job.shape[dim];
    }
    for (int64_t e : p.dshape) p.outer *= e;
    return p;
}

}  // namespace

void gather_batch(const std::vector<GatherJob>& jobs, int threads) {
    for (size_t j = 0; j < jobs.size(); ++j) {
        const GatherJob& job = jobs[j];
        PYPRUNE_CHECK(job.src != nullptr && job.dst != nullptr, "gather job ", j, ": null pointer");
        PYPRUNE_CHECK(job.elem_size >= 1, "gather job ", j, ": element size must be >= 1");
        PYPRUNE_CHECK(job.index.size() <= job.shape.size(), "gather job ", j, ": ", job.index.size(),
                      " index lists for a tensor of rank ", job.shape.size());
        for (size_t dim = 0; dim < job.index.size(); ++dim) {
            for (int64_t v : job.index[dim]) {
                PYPRUNE_CHECK(v >= 0 && v < job.shape[dim], "gather job ", j, ": index ", v,
                              " out of range for dim ", dim, " of size ", job.shape[dim]);
            }
        }
        for (const GatherFold& f : job.folds) {
            PYPRUNE_CHECK(job.elem_size == 4, "gather job ", j, ": folds need float32 elements");
            PYPRUNE_CHECK(f.dim >= 0 && f.dim < static_cast<int64_t>(job.index.size()) && !job.index[f.dim].empty(),
                          "gather job ", j, ": a fold along dim ", f.dim, " needs that dim's index list");
            const auto kept = static_cast<int64_t>(job.index[f.dim].size());
            PYPRUNE_CHECK(static_cast<int64_t>(f.start.size()) == kept + 1 && f.start[0] == 0 &&
                              f.start[kept] == static_cast<int64_t>(f.src.size()) && f.src.size() == f.scale.size(),
                          "gather job ", j, ": malformed fold along dim ", f.dim);
            for (int64_t p = 0; p < kept; ++p)
                PYPRUNE_CHECK(f.start[p] <= f.start[p + 1], "gather job ", j, ": malformed fold along dim ", f.dim);
            for (int64_t v : f.src)
                PYPRUNE_CHECK(v >= 0 && v < job.shape[f.dim], "gather job ", j, ": fold source ", v,
                              " out of range for dim ", f.dim, " of size ", job.shape[f.dim]);
        }
    }
    std::vector<Plan> plans;
    plans.reserve(jobs.size());
    std::vector<Task> tasks;
    const int64_t target = 1 << 16;  // ~64 KiB of copying per task
    for (size_t j = 0; j < jobs.size(); ++j) {
        plans.push_back(make_plan(jobs[j]));
        const Plan& p = plans.back();
        const int64_t per = std::max<int64_t>(1, target / std::max<int64_t>(1, p.block));
        for (int64_t lo = 0; lo < p.outer; lo += per) tasks.push_back({j, lo, std::min(p.outer, lo + per)});
    }
    const int nt = resolve_threads(threads);
    const int64_t nt_tasks = static_cast<int64_t>(tasks.size());
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4) if (nt > 1 && nt_tasks > 8)
    for (int64_t q = 0; q < nt_tasks; ++q) {
        const Task& t = tasks[q];
        const GatherJob& job = jobs[t.job];
        const Plan& p = plans[t.job];
        const char* src = static_cast<const char*>(job.src);
        char* dst = static_cast<char*>(job.dst);
        const int64_t nd = p.last + 1;
        std::vector<int64_t> idx(static_cast<size_t>(std::max<int64_t>(nd, 1)));
        for (int64_t o = t.lo; o < t.hi; ++o) {
            int64_t rem = o, off = 0;
            for (int64_t dim = nd - 1; dim >= 0; --dim) {
                const int64_t i = rem % p.dshape[dim];
                rem /= p.dshape[dim];
                idx[dim] = i;
                const auto& ix = job.index[dim];
                off += (ix.empty() ? i : ix[i]) * p.sstride[dim];
            }
            std::memcpy(dst + o * p.block, src + off, static_cast<size_t>(p.block));
            for (const GatherFold& f : job.folds) {  // dims with folds are indexed: f.dim <= p.last
                const int64_t i = idx[f.dim];
                const char* base = src + off - job.index[f.dim][i] * p.sstride[f.dim];
                float* d = reinterpret_cast<float*>(dst + o * p.block);
                const int64_t len = p.block / 4;
                for (int64_t q = f.start[i]; q < f.start[i + 1]; ++q) {
                    const float* s = reinterpret_cast<const float*>(base + f.src[q] * p.sstride[f.dim]);
                    const float a = f.scale[q];
                    for (int64_t e = 0; e < len; ++e) {
                        const float prod = a * s[e];
                        d[e] += prod;
                    }
                }
            }
        }
    }
}

}  // namespace pyprune
