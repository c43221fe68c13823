"""The serving snapshot: the latest features of every customer, written atomically."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.build import build_features, to_timestamp
from features.config import FeatureConfig
from features.errors import InputError
from features.io import atomic_write
from features.tables import Tables
from features.training_set import data_end
from features.validate import now_utc

METADATA_KEY = b"sendwise"


def snapshot_as_of(tables: Tables) -> datetime:
    """Just after the last row, so that the snapshot sees every row."""
    return data_end(tables) + timedelta(microseconds=1)


def write_snapshot(tables: Tables, out: Path | str, as_of: object | None = None,
                   config: FeatureConfig | None = None) -> tuple[pd.DataFrame, datetime]:
    """Build features at ``as_of`` (default: just after the data ends) and replace ``out``
    atomically: a crash mid-write leaves the previous snapshot in place. An ``as_of`` in the future
    is an InputError: the snapshot would age every customer by time that has not passed."""
    when = snapshot_as_of(tables) if as_of is None else to_timestamp(as_of)
    if as_of is not None and when > now_utc():
        raise InputError(f"as_of {when:%Y-%m-%dT%H:%M:%S} is in the future (it is now {now_utc():%Y-%m-%dT%H:%M}Z); "
                         "a snapshot is of a moment whose data can exist.")
    features = build_features(tables, when, config)
    table = pa.Table.from_pandas(features, preserve_index=False)
    meta = {"as_of": when.isoformat(), "created_at": datetime.now(UTC).isoformat(), "rows": len(features)}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: json.dumps(meta).encode()})
    atomic_write(Path(out), lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    return features, when


def read_snapshot(path: Path | str) -> tuple[pd.DataFrame, dict]:
    """The snapshot's features and its metadata (``as_of``, ``created_at``, ``rows``)."""
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    return table.to_pandas(), meta
