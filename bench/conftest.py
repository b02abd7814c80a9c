"""Shared fixtures for the benchmarks and the summary table printed at the end of a run."""
from __future__ import annotations

import json
import pathlib
import sys


_here = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(_here), str(_here.parent / "tests")]

from bench_tables import FINALIZERS, TABLES, out_dir, partial_file  # noqa: E402

from pyprune.report import markdown_table  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    for fn in FINALIZERS:
        fn()
    if not TABLES:
        return
    out = out_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in TABLES.items():
        terminalreporter.write_sep("=", f"pyprune bench table: {name}")
        text = markdown_table(rows)
        terminalreporter.write_line(text)
        (out / f"{name}.md").write_text(text + "\n")
        (out / f"{name}.json").write_text(json.dumps(rows, indent=1, default=str))
        partial_file(name).unlink(missing_ok=True)
        terminalreporter.write_line(f"(written to {out / name}.md/.json)")
