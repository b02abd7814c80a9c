from __future__ import annotations

import pathlib
import sys

# tests/reference.py is a plain helper module shared by the tests.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
