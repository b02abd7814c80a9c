"""Every Python snippet in the README runs as written, each on its own in a fresh
interpreter and an empty folder. Snippets the README says take minutes run under
``-m slow``."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, re.S)
SLOW_MARKERS = ("pyprune.benchmark(", "target_speedup=")  # the README says these take minutes


def _params():
    out = []
    for i, code in enumerate(SNIPPETS):
        slow = any(m in code for m in SLOW_MARKERS)
        out.append(pytest.param(code, id=f"snippet{i}", marks=[pytest.mark.slow] if slow else []))
    return out


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 4


@pytest.mark.parametrize("code", _params())
def test_readme_snippet_runs(code, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                       env=env)
    assert p.returncode == 0, f"README snippet failed:\n{code}\n--- stderr ---\n{p.stderr[-3000:]}"
