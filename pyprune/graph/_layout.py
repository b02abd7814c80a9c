"""Channel layouts: which global channel each position of a tensor's channel dim holds."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """Tensor dim `dim` holds, at position p, global channel `ids[p]`.

    Global channels are numbered once per producer (a conv's outputs, a Linear's outputs,
    a network input). Coupling between channels (residual adds, depthwise convs, ...) is
    recorded separately as unions of ids, so a layout is a plain, cheap array.
    """

    dim: int
    ids: np.ndarray  # int64, length = tensor.shape[dim]
    # a second dim holding the same channels at the same positions: a channel-by-channel map
    # (cross-covariance attention's ``q @ k^T`` over the tokens), whose rows and columns a
    # cut shortens together. Only the rules that know it are given such a tensor (see
    # ``_trace.CROSS_RULES``); any other op on one is reported as unsupported.
    cross: int | None = None
