"""Pure-torch references the tests (and benchmarks) check the C++ core against."""
from __future__ import annotations

import torch


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    n = x.norm(dim=1, keepdim=True)
    return torch.where(n > 0, x / n.clamp_min(1e-300), torch.zeros_like(x))


def cosine_similarity(w: torch.Tensor) -> torch.Tensor:
    u = unit_rows(w)
    return u @ u.T


def fpgm_scores(w: torch.Tensor) -> torch.Tensor:
    x = w.reshape(w.shape[0], -1).to(torch.float64)
    return torch.cdist(x, x).sum(dim=1)


def lloyd(x: torch.Tensor, init: torch.Tensor, iters: int, early_stop: bool = False):
    """Plain spherical Lloyd loop: returns (centroids, labels, objective per iteration).

    Same conventions as the core: ties to the lowest index, empty clusters re-seeded with the
    worst-served points (lowest cosine first), members that cancel keep the old centroid.
    """
    xn = unit_rows(x).to(x.dtype if x.dtype == torch.float64 else torch.float32)
    c = init / init.norm(dim=1, keepdim=True)
    c = c.to(xn.dtype)
    labels = None
    objective = []
    for it in range(iters):
        s = xn @ c.T
        best, new = s.max(dim=1)
        objective.append(float(best.double().sum()))
        if early_stop and labels is not None and torch.equal(new, labels):
            labels = new
            break
        labels = new
        sums = torch.zeros_like(c).index_add_(0, labels, xn)
        counts = torch.bincount(labels, minlength=c.shape[0])
        norms = sums.norm(dim=1, keepdim=True)
        c = torch.where((counts[:, None] > 0) & (norms > 0), sums / norms.clamp_min(1e-30), c)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            order = torch.argsort(best, stable=True)
            for j, p in zip(empty.tolist(), order.tolist()):
                c[j] = xn[p]
    return c, labels, objective


def mean_cosine_to_nearest(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Mean over filters of the cosine to the nearest centroid (the quality measure)."""
    xn = unit_rows(x).float()
    c = centroids.float() / centroids.float().norm(dim=1, keepdim=True)
    return float((xn @ c.T).max(dim=1).values.double().mean())
