"""Shared fixtures for the benchmarks and the summary table printed at the end of a run."""
from __future__ import annotations

import json
import os
import pathlib
import sys


_here = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(_here), str(_here.parent / "tests")]

from bench_tables import FINALIZERS, TABLES  # noqa: E402

from pyprune.report import markdown_table  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    for fn in FINALIZERS:
        fn()
    if not TABLES:
        return
    out_dir = pathlib.Path(os.environ.get("PYPRUNE_BENCH_OUT", "results/bench"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in TABLES.items():
        terminalreporter.write_sep("=", f"pyprune bench table: {name}")
        text = markdown_table(rows)
        terminalreporter.write_line(text)
        (out_dir / f"{name}.md").write_text(text + "\n")
        (out_dir / f"{name}.json").write_text(json.dumps(rows, indent=1))
        terminalreporter.write_line(f"(written to {out_dir / name}.md/.json)")
