"""Serving snapshot: latest features, atomic replacement."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from features.snapshot import read_snapshot, write_snapshot
from features.tables import Tables


def test_snapshot_sees_every_row_and_records_its_as_of(tiny_tables: Tables, tmp_path: Path) -> None:
    features, as_of = write_snapshot(tiny_tables, tmp_path / "snap.parquet")
    frame, meta = read_snapshot(tmp_path / "snap.parquet")
    assert list(frame["customer_id"]) == ["a", "b", "c"]
    assert meta["as_of"] == as_of.isoformat() and meta["rows"] == 3
    assert frame.set_index("customer_id").loc["c", "cart_adds_1d"] == 1  # the last row, Jan 31 12:00


def test_a_crash_mid_write_leaves_the_previous_snapshot(tiny_tables: Tables, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "snap.parquet"
    write_snapshot(tiny_tables, target, as_of="2024-01-20")
    before = target.read_bytes()

    def crash(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        write_snapshot(tiny_tables, target)
    assert target.read_bytes() == before
    frame, meta = read_snapshot(target)
    assert meta["as_of"] == "2024-01-20T00:00:00" and list(frame["customer_id"]) == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["snap.parquet"]  # no temp file left behind
