"""Rows the benchmarks record; bench/conftest.py prints and writes them at the end."""
from __future__ import annotations

from collections import defaultdict

TABLES: dict[str, list[dict]] = defaultdict(list)


def record(table: str, **row) -> None:
    TABLES[table].append(row)


# Callables run just before the tables are printed (e.g. to fill in columns that depend
# on measurements taken across the whole run).
FINALIZERS: list = []
