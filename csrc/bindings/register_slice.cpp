#include <vector>

#include "../core/slice.h"
#include "arrays.h"

namespace pyprune::bind {

void register_slice(py::module_& m) {
    m.def(
        "gather",
        [](const std::vector<py::array>& sources,
           const std::vector<std::vector<std::vector<int64_t>>>& indices, int threads) {
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
        py::arg("sources"), py::arg("indices"), py::arg("threads") = 0,
        "Structured slicing of many tensors at once: out[i] = sources[i][ix0, ix1, ...] (outer "
        "product; an empty index list keeps the whole dim).");
}

}  // namespace pyprune::bind
