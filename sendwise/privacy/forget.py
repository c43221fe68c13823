"""``sendwise privacy forget``: remove customers from every store the project writes.

In order: a tombstone in the data directory (from then on imports, loads and the running service
skip the customer); their rows in the data directory's tables and rejects and in the other files
named (snapshots, training sets, score or recommendation outputs); their records in the exposure
log, pseudonymised; their events in the event log (a file rewritten without them, or in Redis their
entries deleted; the segments worker's cursor lowered first); their rows in every recommender saved in the local MLflow store and
in the models' holdout score files there; their lines in the service's trigger outbox and timers
journal (:mod:`sendwise.privacy.live_stores`, the webhook's cursor kept right).

Every path is checked before anything is written: a folder, file or store that is named but not
there stops the command (a typo must not turn into "0 rows removed"), and so does an outbox, timers
journal or cursor that cannot be read, or an outbox a running service holds (stop it first). The
report counts what was removed per customer: an id that matched nothing anywhere, and had no
tombstone before, is named in :attr:`ForgetReport.unmatched`, and a file that could not be read (the
others are still searched) in :attr:`ForgetReport.failed`; the command then fails, saying so (the
tombstone stays).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from features.errors import InputError, NotFoundError
from features.event_store import EventSource, forget_in_source
from features.io import Encoding, read_tombstones, write_tombstones
from features.privacy import drop_customer_rows, tabular_files
from sendwise.privacy.live_stores import LiveStores
from sendwise.privacy.stores import check_event_log, check_exposure_log, check_mlruns
from serving.exposures import pseudonymise_customers
from training.holdout_scores import score_files
from training.recommenders.store import forget_in_store


@dataclass
class ForgetReport:
    customer_ids: list[str]
    tombstones: Path
    file_rows: dict[str, int] = field(default_factory=dict)  # rows removed per file that held any
    exposures: int = 0  # exposure records pseudonymised
    events: int = 0  # events removed from the event log
    outbox: int = 0  # transitions removed from the trigger outbox
    timers: int = 0  # records removed from the timers journal
    recommender_rows: dict[str, int] = field(default_factory=dict)  # rows removed per saved recommender
    holdout_rows: dict[str, int] = field(default_factory=dict)  # rows removed per holdout score file
    found: Counter[str] = field(default_factory=Counter)  # rows and records removed per customer, everywhere
    already_forgotten: list[str] = field(default_factory=list)  # ids with a tombstone from an earlier forget
    stores: list[str] = field(default_factory=list)  # what was searched, in words
    failed: dict[str, str] = field(default_factory=dict)  # files that could not be searched, and why

    @property
    def forgotten(self) -> list[str]:
        """The ids of which something was removed."""
        return [c for c in self.customer_ids if self.found[c]]

    @property
    def unmatched(self) -> list[str]:
        """The ids that matched nothing anywhere and had no tombstone before: most likely a typo."""
        return [c for c in self.customer_ids if not self.found[c] and c not in self.already_forgotten]

    @property
    def nothing_left(self) -> list[str]:
        """The ids forgotten before, of which nothing was found this time."""
        return [c for c in self.customer_ids if not self.found[c] and c in self.already_forgotten]


def forget_customers(customer_ids: Iterable[str], data_dir: Path | str, mlruns: Path | str | None = None,
                     exposure_log: Path | str | None = None, files: Iterable[Path | str] = (),
                     encoding: Encoding | str = Encoding.UTF_8, event_log: EventSource | str | None = None,
                     state_dir: Path | str | None = None, earlier_event_log: Path | None = None) -> ForgetReport:
    """Forget ``customer_ids`` everywhere; returns what was removed where. ``mlruns``, ``exposure_log``
    and ``event_log`` are None where there is no such store; a path given must exist (``event_log`` may
    be a log in Redis, a :class:`~features.redis_log.RedisLocation`, whose server must answer). ``state_dir``
    (None: none) is the service's state folder, whose outbox, timers and cursors are cleaned (the
    service stopped). ``earlier_event_log`` is the file log a service wrote before the project moved its
    log into an online store: cleaned too. CSV files that are not UTF-8 are read in ``encoding`` (the
    shop's, as when the data was loaded)."""
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
    if mlruns is not None:
        mlruns = check_mlruns(mlruns)
    if exposure_log is not None:
        exposure_log = check_exposure_log(exposure_log)
    logs = [(check_event_log(log), lowers) for log, lowers in ((event_log, True), (earlier_event_log, False))
            if log is not None]
    if state_dir is None:
        return _forget(ids, data_dir, mlruns, exposure_log, files, encoding, logs, None)
    with LiveStores.open(state_dir) as live:  # locked and read: refused while the service runs, or one is damaged
        return _forget(ids, data_dir, mlruns, exposure_log, files, encoding, logs, live)


def _forget(ids: list[str], data_dir: Path, mlruns: Path | None, exposure_log: Path | None, files: list[Path],
            encoding: Encoding | str, event_logs: list[tuple[EventSource, bool]],
            live: LiveStores | None) -> ForgetReport:
    """:func:`forget_customers` once every path is checked (and the live stores locked); ``event_logs``
    are (log, whether the segments worker's cursor counts its events)."""
    before = read_tombstones(data_dir)
    report = ForgetReport(ids, write_tombstones(data_dir, before.adding(ids)),
                          already_forgotten=[c for c in ids if c in before])
    report.stores.append(f"data directory {data_dir}")
    report.stores.extend(str(f) for f in files)
    for root in (data_dir, *files):
        for path in tabular_files(root):
            try:
                removed = drop_customer_rows(path, ids, encoding)
            except InputError as exc:  # the others are still searched; the command fails at the end
                report.failed[str(path)] = str(exc)
                continue
            if removed:
                report.file_rows[str(path)] = removed.total()
                report.found += removed
    if exposure_log is not None:
        report.stores.append(f"exposure log {exposure_log}")
        removed = pseudonymise_customers(exposure_log, ids)
        report.exposures = removed.total()
        report.found += removed
    for event_log, counted in event_logs:
        report.stores.append(f"event log {event_log}")
        try:
            if live is not None and counted:  # lowered first: a crash between the two replays events, never skips one
                live.lower_segments_cursor(event_log, ids)
            removed = forget_in_source(event_log, ids)
        except InputError as exc:  # a damaged line: the log is left as it was, and the command fails
            report.failed[str(event_log)] = str(exc)
        else:
            report.events += removed.total()
            report.found += removed
    if mlruns is not None:
        report.stores.append(f"MLflow store {mlruns}")
        for directory, removed in forget_in_store(mlruns, ids).items():
            report.recommender_rows[directory] = removed.total()
            report.found += removed
        for path in score_files(mlruns):
            removed = drop_customer_rows(path, ids)
            if removed:
                report.holdout_rows[str(path)] = removed.total()
                report.found += removed
    if live is not None:
        report.stores.extend(live.names)
        try:
            removed_live = live.forget(ids)
        except InputError as exc:  # changed since it was checked: a service started on it after all
            report.failed[str(live.state)] = str(exc)
        else:
            report.outbox, report.timers = removed_live["outbox"].total(), removed_live["timers"].total()
            for removed in removed_live.values():
                report.found += removed
    return report
