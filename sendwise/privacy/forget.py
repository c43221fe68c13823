"""``sendwise privacy forget``: remove customers from every store the project writes.

In order: a tombstone in the data directory (from then on imports, loads and the running service
skip the customer); their rows in the data directory's tables and rejects and in the other files
named (snapshots, training sets, score or recommendation outputs); their records in the exposure
log, pseudonymised; their rows in every recommender saved in the local MLflow store and in the
models' holdout score files there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from features.errors import InputError, NotFoundError
from features.io import read_tombstones, write_tombstones
from features.privacy import drop_customer_rows, tabular_files
from serving.exposures import pseudonymise_customers
from training.holdout_scores import score_files
from training.recommenders.store import forget_in_store


@dataclass
class ForgetReport:
    customer_ids: list[str]
    tombstones: Path
    file_rows: dict[str, int] = field(default_factory=dict)  # rows removed per file that held any
    exposures: int = 0  # exposure records pseudonymised
    recommender_rows: dict[str, int] = field(default_factory=dict)  # rows removed per saved recommender
    holdout_rows: dict[str, int] = field(default_factory=dict)  # rows removed per holdout score file


def forget_customers(customer_ids: Iterable[str], data_dir: Path | str, mlruns: Path | str | None = None,
                     exposure_log: Path | str | None = None, files: Iterable[Path | str] = ()) -> ForgetReport:
    """Forget ``customer_ids`` everywhere; returns what was removed where."""
    given = list(customer_ids)
    ids = sorted({c.strip() for c in given})  # ids are trimmed on import, as here
    if not ids or any(not c for c in ids):
        raise InputError(f"customer ids must be non-empty text; got {given!r}")
    data_dir, files = Path(data_dir), [Path(f) for f in files]
    if not data_dir.is_dir():
        raise NotFoundError(f"data directory {data_dir} does not exist; pass --data DIR with the shop's tables.")
    missing = [str(f) for f in files if not f.exists()]
    if missing:  # checked before anything is written, so a typo does not leave a half-done forget
        raise NotFoundError(f"{', '.join(missing)} does not exist; --file takes a snapshot, training set or "
                                "output file (or a folder of them).")
    report = ForgetReport(ids, write_tombstones(data_dir, read_tombstones(data_dir).adding(ids)))
    for root in (data_dir, *files):
        for path in tabular_files(root):
            n = drop_customer_rows(path, ids)
            if n:
                report.file_rows[str(path)] = n
    if exposure_log is not None:
        report.exposures = pseudonymise_customers(exposure_log, ids)
    if mlruns is not None and Path(mlruns).is_dir():
        report.recommender_rows = forget_in_store(mlruns, ids)
        for path in score_files(mlruns):
            n = drop_customer_rows(path, ids)
            if n:
                report.holdout_rows[str(path)] = n
    return report
