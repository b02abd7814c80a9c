#include <vector>

#include "../core/slice.h"
#include "arrays.h"

namespace pyprune::bind {

namespace {

/// A 1-D array (any numeric dtype, converted) as a std::vector<T>.
template <typename T>
std::vector<T> vector_of(const py::handle& h) {
    const auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(h);
    PYPRUNE_CHECK(a && a.ndim() == 1, "gather: fold arrays must be 1-D");
    return std::vector<T>(a.data(), a.data() + a.size());
}

}  // namespace

void register_slice(py::module_& m) {
    m.def(
        "gather",
        [](const std::vector<py::array>& sources,
           const std::vector<std::vector<std::vector<int64_t>>>& indices, int threads, const py::list& folds) {
            PYPRUNE_CHECK(sources.size() == indices.size(), "gather: one index set per tensor: ",
                          sources.size(), " tensors, ", indices.size(), " index sets");
            std::vector<GatherJob> jobs(sources.size());
            std::vector<py::array> out;
            out.reserve(sources.size());
            for (size_t i = 0; i < sources.size(); ++i) {
                const py::array& a = sources[i];
                PYPRUNE_CHECK((a.flags() & py::array::c_style) != 0, "gather: tensor ", i,
                              " must be C-contiguous");
                GatherJob& job = jobs[i];
                job.src = a.data();
                job.elem_size = static_cast<int64_t>(a.itemsize());
                job.shape.assign(a.shape(), a.shape() + a.ndim());
                job.index = indices[i];
                if (i < folds.size()) {
                    for (const auto& item : py::cast<py::list>(folds[i])) {
                        const auto f = py::cast<py::tuple>(item);
                        PYPRUNE_CHECK(f.size() == 4, "gather: a fold is (dim, start, src, scale)");
                        GatherFold fold;
                        fold.dim = py::cast<int64_t>(f[0]);
                        fold.start = vector_of<int64_t>(f[1]);
                        fold.src = vector_of<int64_t>(f[2]);
                        fold.scale = vector_of<float>(f[3]);
                        job.folds.push_back(std::move(fold));
                    }
                }
                PYPRUNE_CHECK(job.index.size() <= job.shape.size(), "gather: tensor ", i, " of rank ",
                              job.shape.size(), " got ", job.index.size(), " index lists");
                const auto shape = gather_shape(job);
                std::vector<py::ssize_t> dims(shape.begin(), shape.end());
                out.emplace_back(a.dtype(), dims);
                job.dst = out.back().mutable_data();
            }
            {
                py::gil_scoped_release nogil;
                gather_batch(jobs, threads);
            }
            return out;
        },
        py::arg("sources"), py::arg("indices"), py::arg("threads") = 0, py::arg("folds") = py::list(),
        "Structured slicing of many tensors at once: out[i] = sources[i][ix0, ix1, ...] (outer "
        "product; an empty index list keeps the whole dim). folds[i] (float32 tensors): a list of "
        "(dim, start, src, scale): output position p along dim also receives scale[q] * the source "
        "slice src[q] for q in start[p]..start[p + 1] (weight merging).");
}

}  // namespace pyprune::bind
