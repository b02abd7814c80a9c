#include <optional>
#include <vector>

#include "../core/kmeans.h"
#include "../cuda/kmeans_emulation.h"
#include "arrays.h"

namespace pyprune::bind {

namespace {

/// (centroids, labels, representatives, objective, n_iter), and with `details` also
/// (stats, cosines, kernel, norms, rep_cosines, rep_residuals): stats a dict of per-iteration arrays (changed, moved, reseeded,
/// recomputed: int64; seconds: float64), cosines a float32 array, kernel the path's name.
/// The centroids (K x d, the largest part) move into their array without a copy.
py::tuple result_to_python(KMeansResult&& r, bool details, const char* kernel = nullptr) {
    py::array_t<float> centroids = move_to_numpy(std::move(r.centroids), {r.k, r.d});
    if (!details)
        return py::make_tuple(centroids, to_numpy(r.labels), to_numpy(r.representatives),
                              to_numpy(r.objective), r.n_iter);
    std::vector<int64_t> changed, moved, reseeded, recomputed;
    std::vector<double> seconds;
    for (const auto& s : r.stats) {
        changed.push_back(s.changed);
        moved.push_back(s.moved);
        reseeded.push_back(s.reseeded);
        recomputed.push_back(s.recomputed);
        seconds.push_back(s.seconds);
    }
    py::dict stats;
    stats["changed"] = to_numpy(changed);
    stats["moved"] = to_numpy(moved);
    stats["reseeded"] = to_numpy(reseeded);
    stats["recomputed"] = to_numpy(recomputed);
    stats["seconds"] = to_numpy(seconds);
    return py::make_tuple(centroids, to_numpy(r.labels), to_numpy(r.representatives),
                          to_numpy(r.objective), r.n_iter, stats, to_numpy(r.cosines),
                          std::string(kernel != nullptr ? kernel : kernel_name(r.kernel)), to_numpy(r.norms), to_numpy(r.rep_cosines),
                          to_numpy(r.rep_residuals));
}

/// One layer's filters: a float32 C-contiguous 2-D array, or a list of them with the same
/// rows (column blocks, read in place: see Filters).
Filters as_filters(const py::handle& h, const std::string& what) {
    if (!py::isinstance<py::list>(h) && !py::isinstance<py::tuple>(h)) return as_matrix(py::cast<py::array>(h), what);
    std::vector<MatrixView> blocks;
    size_t b = 0;
    for (const py::handle& a : h) blocks.push_back(as_matrix(py::cast<py::array>(a), what + " block " + std::to_string(b++)));
    return Filters(std::move(blocks), what);
}

/// One parameter set per layer: K from `ks`, the rest shared.
std::vector<KMeansParams> layer_params(const std::vector<int64_t>& ks, int max_iter, bool early_stop, uint64_t seed,
                                       bool reuse, std::optional<GemmKernel> kernel) {
    std::vector<KMeansParams> params(ks.size());
    for (size_t l = 0; l < ks.size(); ++l) {
        params[l].k = ks[l];
        params[l].max_iter = max_iter;
        params[l].early_stop = early_stop;
        params[l].seed = seed;
        params[l].reuse = reuse;
        params[l].kernel = kernel;
    }
    return params;
}

/// The starting centroids of each layer (null: k-means++), each checked to be K x d; empty
/// when none were given.
std::vector<const float*> init_pointers(const std::optional<std::vector<std::optional<py::array>>>& inits,
                                        const std::vector<int64_t>& ks, const std::vector<int64_t>& cols) {
    std::vector<const float*> out;
    if (!inits) return out;
    PYPRUNE_CHECK(inits->size() == ks.size(), "init: one entry per layer: ", ks.size(), " layers, ", inits->size(),
                  " entries");
    for (size_t l = 0; l < ks.size(); ++l) {
        const auto& a = (*inits)[l];
        if (!a) {
            out.push_back(nullptr);
            continue;
        }
        const auto c = as_matrix(*a, "init[" + std::to_string(l) + "]");
        PYPRUNE_CHECK(c.rows == ks[l] && c.cols == cols[l], "init[", l, "]: expected shape (", ks[l], ", ", cols[l],
                      "), got (", c.rows, ", ", c.cols, ")");
        out.push_back(c.data);
    }
    return out;
}

}  // namespace

void register_kmeans(py::module_& m) {
    m.def(
        "spherical_kmeans_emulated",
        [](const py::list& weights, const std::vector<int64_t>& ks, int max_iter, bool early_stop, uint64_t seed,
           const std::optional<std::vector<std::optional<py::array>>>& inits, bool reuse) {
            std::vector<MatrixView> xs;
            for (size_t l = 0; l < weights.size(); ++l)
                xs.push_back(as_matrix(py::cast<py::array>(weights[l]), "weights[" + std::to_string(l) + "]"));
            PYPRUNE_CHECK(ks.size() == xs.size(), "ks: one K per layer: ", xs.size(), " layers, ", ks.size(),
                          " values of K");
            const std::vector<KMeansParams> params = layer_params(ks, max_iter, early_stop, seed, reuse, {});
            std::vector<int64_t> cols;
            for (const auto& x : xs) cols.push_back(x.cols);
            const std::vector<const float*> init_ptrs = init_pointers(inits, ks, cols);
            std::vector<KMeansResult> results;
            {
                py::gil_scoped_release nogil;
                results = device::spherical_kmeans_emulated(xs, params, init_ptrs);
            }
            py::list out;
            for (auto& r : results) out.append(result_to_python(std::move(r), true, "emulated"));
            return out;
        },
        py::arg("weights"), py::arg("ks"), py::arg("max_iter"), py::arg("early_stop"), py::arg("seed"),
        py::arg("inits"), py::arg("reuse"),
        "The CUDA k-means's block solver run on the host with one thread (for tests): the same source as the "
        "GPU kernel. Contiguous layers only. Returns what spherical_kmeans(details=True) returns, kernel "
        "'emulated'.");

    m.def(
        "spherical_kmeans",
        [](const py::list& weights, const std::vector<int64_t>& ks, int max_iter,
           bool early_stop, uint64_t seed, int threads,
           const std::optional<std::vector<std::optional<py::array>>>& inits, bool reuse,
           const std::string& kernel, bool details) {
            std::vector<Filters> xs;
            for (size_t l = 0; l < weights.size(); ++l) xs.push_back(as_filters(weights[l], "weights[" + std::to_string(l) + "]"));
            PYPRUNE_CHECK(ks.size() == xs.size(), "ks: one K per layer: ", xs.size(), " layers, ",
                          ks.size(), " values of K");
            std::optional<GemmKernel> k;
            if (!kernel.empty()) k = parse_kernel(kernel);
            const std::vector<KMeansParams> params = layer_params(ks, max_iter, early_stop, seed, reuse, k);
            std::vector<int64_t> cols;
            for (const auto& x : xs) cols.push_back(x.cols);
            const std::vector<const float*> init_ptrs = init_pointers(inits, ks, cols);
            std::vector<KMeansResult> results;
            {
                py::gil_scoped_release nogil;
                results = spherical_kmeans_batch(xs, params, init_ptrs, threads);
            }
            py::list out;
            for (auto& r : results) out.append(result_to_python(std::move(r), details));
            return out;
        },
        py::arg("weights"), py::arg("ks"), py::arg("max_iter") = 100, py::arg("early_stop") = true,
        py::arg("seed") = 0, py::arg("threads") = 0, py::arg("inits") = py::none(),
        py::arg("reuse") = true, py::arg("kernel") = "", py::arg("details") = false,
        "Spherical k-means of many layers in one call. A layer is a float32 (filters x weights) array "
        "or a list of such arrays with the same rows (column blocks, read in place). Returns one tuple per layer: "
        "(centroids, labels, representatives, objective, n_iter), with details=True followed by "
        "(stats, cosines, kernel, norms, rep_cosines, rep_residuals): stats a dict of per-iteration arrays changed, "
        "moved, reseeded, recomputed, seconds; cosines each filter's cosine to its centroid; kernel "
        "the products path used; norms each filter's L2 norm; rep_cosines each filter's cosine to "
        "its cluster's representative and rep_residuals the relative residual of its least-squares "
        "multiple of it. `kernel` forces a path (blas, portable, avx2, avx512); empty: PYPRUNE_GEMM "
        "or the fastest this CPU runs.");
}

}  // namespace pyprune::bind
