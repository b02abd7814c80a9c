"""Files pyprune writes: whole or not at all, with the modes a plain open() would give."""
from __future__ import annotations

import os
import stat

import pytest

from pyprune._io import atomic_write, write_text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_mode_and_a_replaced_file_keeps_its_own(tmp_path, umask):
    old = os.umask(umask)
    try:
        new = write_text(tmp_path / "a.json", "{}")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives under this umask: the reference
        assert stat.S_IMODE(new.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
        os.chmod(new, 0o640)
        write_text(new, "{1}")
        assert stat.S_IMODE(new.stat().st_mode) == 0o640 and new.read_text() == "{1}"
    finally:
        os.umask(old)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "x.pt", fail)
    assert list(tmp_path.iterdir()) == []
