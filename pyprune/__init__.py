"""pyprune: structured pruning that makes trained CNNs physically smaller and faster."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import engine
from .criteria import available_criteria, register_criterion
from .graph import ChannelGraph, GraphError, build_graph
from .prune import Pruner, PrunePlan, PruneResult, prune
from .summary import Summary

try:
    __version__ = version("pyprune")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "__version__",
    "engine",
    "prune",
    "PruneResult",
    "PrunePlan",
    "Pruner",
    "build_graph",
    "ChannelGraph",
    "GraphError",
    "Summary",
    "register_criterion",
    "available_criteria",
]
