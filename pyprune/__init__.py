"""pyprune: structured pruning that makes trained CNNs physically smaller and faster."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import engine, layers
from .criteria import Selection, available_criteria, register_criterion
from .graph import ChannelGraph, GraphError, build_graph
from .layers import register_layer, register_op
from .prune import PruneConfig, Pruner, PrunePlan, PruneResult, prune
from .schedule import register_schedule
from .summary import CostModel, Summary


# The submodule is loaded first, then the name is bound to its function: `pyprune.export(...)`
# exports, and `from pyprune.export import ExportResult` still reaches the module.
from . import export as _export_module  # noqa: E402,F401
from .export import export  # noqa: E402


# As for export: the submodule first, then the name bound to its function.
from . import centripetal as _centripetal_module  # noqa: E402,F401
from .centripetal import centripetal  # noqa: E402
from .recover import recalibrate_bn  # noqa: E402
from . import sensitivity as _sensitivity_module  # noqa: E402,F401  (registers schedule="sensitivity")
from .sensitivity import Sensitivity, sensitivity  # noqa: E402


def benchmark(*args, **kwargs):
    """Latency/throughput/size in eager, onnxruntime, ExecuTorch (see :mod:`pyprune.bench`)."""
    from .bench import benchmark as _benchmark

    return _benchmark(*args, **kwargs)

try:
    __version__ = version("pyprune")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "__version__",
    "engine",
    "layers",
    "prune",
    "PruneConfig",
    "PruneResult",
    "PrunePlan",
    "Pruner",
    "build_graph",
    "ChannelGraph",
    "GraphError",
    "Summary",
    "CostModel",
    "register_criterion",
    "available_criteria",
    "Selection",
    "register_layer",
    "register_op",
    "register_schedule",
    "export",
    "benchmark",
    "centripetal",
    "recalibrate_bn",
    "sensitivity",
    "Sensitivity",
]
