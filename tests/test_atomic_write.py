"""``atomic_write``: a crash keeps the old file, permissions are kept, a symlink's target is rewritten."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from features.io import atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "orders.csv"
    target.write_text("old\n")
    target.chmod(0o644)
    atomic_write(target, lambda tmp: Path(tmp).write_text("new\n"))
    assert target.read_text() == "new\n"
    assert _mode(target) == 0o644  # mkstemp's 0600 would lock out a service running as another user


def test_a_new_file_gets_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new.txt") == 0o644


def test_rewrites_a_symlinks_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "shared" / "orders.csv"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "data" / "orders.csv"
    link.parent.mkdir()
    link.symlink_to(real)
    atomic_write(link, lambda tmp: Path(tmp).write_text("new\n"))
    assert link.is_symlink()
    assert real.read_text() == "new\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("good")

    def crash(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]
