"""Rows the benchmarks record; bench/conftest.py prints and writes them at the end.

Each row is also appended, as it is recorded, to ``<out>/<table>.partial.jsonl`` (out:
``PYPRUNE_BENCH_OUT``, default ``results/bench``), so a long run stopped part way keeps the
rows it measured; the end of the run writes the whole table and removes that file."""
from __future__ import annotations

import json
import os
import pathlib
from collections import defaultdict

TABLES: dict[str, list[dict]] = defaultdict(list)


def use_checkout() -> None:
    """Make a worker process import the pyprune of this checkout (where `make setup` puts the
    built core beside the sources, as `python3 -m pytest` from the repository root imports
    it), not an installed copy that may be older. Without a built core there, nothing
    changes."""
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    if any((root / "pyprune").glob("_core*")) and str(root) not in sys.path:
        sys.path.insert(0, str(root))


def out_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PYPRUNE_BENCH_OUT", "results/bench"))


def partial_file(table: str) -> pathlib.Path:
    return out_dir() / f"{table}.partial.jsonl"


def record(table: str, **row) -> None:
    if not TABLES[table]:  # the first row of this run: rows of an earlier, stopped run go
        partial_file(table).unlink(missing_ok=True)
    TABLES[table].append(row)
    path = partial_file(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")


# Callables run just before the tables are printed (e.g. to fill in columns that depend
# on measurements taken across the whole run).
FINALIZERS: list = []
