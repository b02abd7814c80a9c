"""pyprune: structured pruning that makes trained CNNs physically smaller and faster."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import engine

try:
    __version__ = version("pyprune")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["engine", "__version__"]
