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


class SplitMix64:
    """The core's random numbers (splitmix64), bit for bit."""

    M = (1 << 64) - 1

    def __init__(self, seed: int):
        self.state = (seed + 0x9E3779B97F4A7C15) & self.M

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.M
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.M
        return z ^ (z >> 31)

    def uniform(self) -> float:
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)


def greedy_kmeanspp(x: torch.Tensor, k: int, seed: int) -> list:
    """Greedy k-means++ on the cosine distance 1 - cos, in float64, as the core seeds (the
    same draws from the same generator): per step 2 + ln K candidates drawn in proportion
    to the distance to the nearest seed, the one that lowers the total distance most kept.
    Returns the filter index of every seed (None where a unit basis vector stands in)."""
    import math

    import numpy as np

    xn = unit_rows(x)
    n = xn.shape[0]
    nonzero = (xn.abs().sum(1) > 0).numpy()
    rng = SplitMix64(seed)
    trials = 2 + int(math.log(k))
    mind = np.where(nonzero, 2.0, 0.0)
    used = np.zeros(n, bool)
    seeds: list = []
    if not nonzero.any():
        return [None] * k
    for j in range(k):
        prefix = np.cumsum(mind)  # sequential, as the core's running sum
        total = prefix[-1]
        picks: list = []
        if total > 0:
            for _ in range(1 if j == 0 else trials):
                target = rng.uniform() * total
                above = np.flatnonzero(prefix > target)
                pick = int(above[0]) if len(above) else int(np.flatnonzero(mind > 0)[-1])
                if pick not in picks:
                    picks.append(pick)
        else:
            free = np.flatnonzero(~used & nonzero)
            picks = [int(free[0])] if len(free) else []
        if not picks:
            seeds.append(None)
            continue
        last = j + 1 == k
        if len(picks) == 1 and last:
            seeds.append(picks[0])
            break
        dist = np.maximum(0.0, 1.0 - (xn[picks] @ xn.T).numpy())
        pots = np.minimum(mind[None, :], dist).sum(1)
        best = int(np.argmin(pots))
        used[picks[best]] = True
        seeds.append(picks[best])
        if last:
            break
        mind = np.where(nonzero & ~used, np.minimum(mind, dist[best]), 0.0)
    return seeds
