"""Writing files without ever losing one: atomic replacement and output checks made
before any work starts."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import stat
import tempfile
from typing import Callable, Iterable

__all__ = ["atomic_write", "atomic_write_pair", "write_text", "write_json", "write_csv", "check_outputs"]


def atomic_write(path: str | os.PathLike, write: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """Call ``write(tmp)`` on a temporary file in `path`'s folder, then rename it over
    `path`: a reader (or a kill at any moment) sees the old file whole or the new one,
    never a part. The temporary file is removed if `write` fails. The file gets the mode a
    plain ``open`` would give it (the umask's; a replaced file keeps its own), not the
    private one of a temporary file."""
    return atomic_write_pair((path,), (write,))[0]


def atomic_write_pair(paths: tuple, writes: tuple) -> tuple:
    """:func:`atomic_write` for files that only make sense together (a .safetensors file and
    its .json), and the one writer of both: each is written whole to a temporary file first,
    then they are renamed one right after the other, so a failure or a kill while writing
    leaves the old ones as they were."""
    paths = tuple(pathlib.Path(p) for p in paths)
    tmps = []
    try:
        for path, write in zip(paths, writes):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            tmps.append(tmp)
            mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask()
            write(pathlib.Path(tmp))
            os.chmod(tmp, mode)
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return paths


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj) -> pathlib.Path:
    """`obj` as strict JSON (atomically): a NaN or infinity, which JSON has no spelling for,
    is written null, so any JSON reader takes the file; numpy scalars as numbers."""
    return write_text(path, json.dumps(_finite(obj), indent=1, default=_number, allow_nan=False))


def _number(v):
    f = float(v)  # numpy and torch scalars
    return f if math.isfinite(f) else None


def _finite(obj):
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def check_outputs(outputs: Iterable, inputs: Iterable = (), *, force: bool = False) -> None:
    """Before any work: every output path may be written. An output that exists needs
    `force`; an output that is one of the `inputs` is refused even with it; its folder
    must exist or be creatable, and be writable. Errors name the user's path. A
    ``.safetensors`` file counts with the ``.json`` written beside it (its architecture)."""
    ins = [p.resolve() for i in inputs if i is not None for p in _with_sidecar(i)]
    for out in (p for o in outputs if o is not None for p in _with_sidecar(o)):
        if out.resolve() in ins:
            raise ValueError(f"{out} is also the input: choose another output path (the input is never "
                             "replaced, even with --force)")
        if out.is_dir():
            raise ValueError(f"{out} is a folder: give a file name")
        if out.exists() and not force:
            raise ValueError(f"{out} already exists: pass --force to replace it, or choose another output path")
        # the folder, or the nearest one above it that exists (the rest is created when the
        # file is written: a command refused later leaves no empty folders behind)
        above = out.parent
        while not above.exists() and above != above.parent:
            above = above.parent
        if not above.is_dir():
            raise ValueError(f"cannot create the folder {out.parent} for {out}: {above} is a file")
        if not os.access(above, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write {out}: the folder {above} is not writable")


def _with_sidecar(path) -> list[pathlib.Path]:
    """The files a checkpoint path stands for: a ``.safetensors`` file and its ``.json``."""
    path = pathlib.Path(path)
    return [path, path.with_suffix(".json")] if path.suffix == ".safetensors" else [path]


def write_csv(path: str | os.PathLike, cols, rows, fmt: Callable = str) -> pathlib.Path:
    """A CSV table (header `cols`, each row's cells through `fmt`), quoted where a cell
    holds a comma, a quote or a line break; written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    w.writerows([fmt(v) for v in r] for r in rows)
    return write_text(path, buf.getvalue())
