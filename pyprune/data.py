"""Data sets. The embedded one is scikit-learn's handwritten digits (1797 real 8x8 images,
10 classes): it ships with the package, so demos and tests need no download."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["digits"]


def digits(size: int = 8, test_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Train and test splits of the digits, as (N, 1, size, size) float tensors scaled to
    [0, 1] and int64 labels. The split is stratified and seeded (the same split every time).
    ``size`` > 8 upsamples bilinearly (for models that want larger inputs)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    y = torch.from_numpy(d.target.astype(np.int64))
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(test_fraction * len(idx)))])
    test_mask = np.zeros(len(y), bool)
    test_mask[test_idx] = True
    tr, te = torch.from_numpy(~test_mask), torch.from_numpy(test_mask)
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te])
