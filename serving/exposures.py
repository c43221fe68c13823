"""The exposure log: one JSON line per decision, appended durably.

Each request's records are written with one ``write`` on a file opened with ``O_APPEND`` before the
request is answered: the kernel holds them, so an acknowledged record survives the process being
killed. With ``fsync=True`` (``SENDWISE_EXPOSURE_FSYNC=true``) each write is also forced to disk, which
survives a power cut too and costs a disk flush per request.
A process killed mid-write can leave at most one torn last line; :func:`read_exposures` skips it
(a line that does not end in a newline or does not parse). Records hold the customer id and no
other personal data.

:func:`pseudonymise_customers` (``sendwise privacy forget``) rewrites the log while services append
to it: writers hold a shared ``flock`` while they write and reopen the path when the file they hold
was replaced; the rewrite copies the bulk without the lock, then holds the exclusive lock only to
rewrite what was appended meanwhile and to rename, so no record appended before or after it is lost.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

from features.schema import CUSTOMER_ID

FORGOTTEN = "forgotten"  # the customer id logged for a forgotten customer; pseudonyms are "forgotten-<hex>"


def is_forgotten_id(customer_id: object) -> bool:
    """A placeholder or pseudonym that stands in the log for a forgotten customer."""
    return isinstance(customer_id, str) and (customer_id == FORGOTTEN or customer_id.startswith(FORGOTTEN + "-"))


class ExposureLog:
    """Append-only JSON-lines file shared by the requests of one worker."""

    def __init__(self, path: Path | str, fsync: bool = False) -> None:
        self.path, self.fsync = Path(path), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if _ends_torn(self.path):  # a killed writer left half a line: start ours on a new one
                os.write(fd, b"\n")
                os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return fd

    def _hold_current_file(self) -> None:
        """Take the shared lock on the file that is at ``path`` now (reopening it after a rewrite)."""
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            if os.fstat(self._fd).st_nlink > 0:
                return
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # replaced by a rewrite: our file is gone
            os.close(self._fd)
            self._fd = self._open()

    def append(self, records: list[dict]) -> None:
        """Write ``records`` (and fsync when asked); returns when the kernel has them."""
        if not records:
            return
        data = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records).encode()
        with self._lock:
            self._hold_current_file()
            try:
                written = os.write(self._fd, data)
                while written < len(data):  # a short write: finish it before anything else is appended
                    written += os.write(self._fd, data[written:])
                if self.fsync:
                    os.fsync(self._fd)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def append_request(self, records: list[dict], customer_keys: list[str]) -> str:
        """Append one request's records (see :func:`exposure_record`) with one request id and time, the
        customer id of each replaced by its key (``forgotten`` for a forgotten customer, never their
        id); returns the request id."""
        stamp = {"request_id": uuid.uuid4().hex, "time": datetime.now(UTC).isoformat()}
        self.append([stamp | r | {"customer_id": key} for key, r in zip(customer_keys, records, strict=True)])
        return stamp["request_id"]

    def close(self) -> None:
        os.close(self._fd)


def exposure_record(customer_id: str, action: str, products: list[str], probability: float,
                    versions: dict[str, str], experiment: str | None = None, variant: str | None = None) -> dict:
    """One exposure record: the customer id and the decision, no other personal data."""
    return {"customer_id": customer_id, "action": action, "products": products, "experiment": experiment,
            "variant": variant, "probability": probability, "model_versions": versions}


def _ends_torn(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def customer_exposures(path: Path | str, customer_id: str) -> list[dict]:
    """Every record of the log about ``customer_id`` (compared as trimmed text)."""
    wanted = customer_id.strip()
    return [r for r in read_exposures(path)
            if isinstance(r, dict) and isinstance(r.get(CUSTOMER_ID), str) and r[CUSTOMER_ID].strip() == wanted]


def read_exposures(path: Path | str) -> list[dict]:
    """Every complete record of the log (a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the torn tail of a killed write
    return out


def pseudonymise_customers(path: Path | str, customer_ids: Collection[str]) -> Counter[str]:
    """Replace ``customer_ids`` in the log by random pseudonyms (one per customer, kept nowhere), so
    that counts per action, variant and model stay right and nothing links back to the customer;
    ids are compared as trimmed text; lines that do not parse (torn tails) are dropped. Returns how
    many records changed per customer id (empty: none, the log is left untouched).

    The bulk of the log is rewritten while writers go on appending; the exclusive lock is held only
    to rewrite what they appended meanwhile and to rename (a few milliseconds of paused appends).
    A symlinked log has the file it points to rewritten (the link stays); the file keeps its
    permissions. A log that does not exist is an error (``FileNotFoundError``), not "nothing found"."""
    path = Path(os.path.realpath(path))
    wanted = {c.strip() for c in customer_ids}
    pseudonyms = {c: f"{FORGOTTEN}-{secrets.token_hex(8)}" for c in wanted}

    def rewrite(lines: bytes) -> tuple[bytes, Counter[str]]:
        out, changed = [], Counter()
        for line in lines.split(b"\n"):
            try:
                record = json.loads(line)
            except ValueError:  # a torn tail, or an empty line
                continue
            customer = record.get(CUSTOMER_ID) if isinstance(record, dict) else None
            if isinstance(customer, str) and customer.strip() in wanted:
                record[CUSTOMER_ID] = pseudonyms[customer.strip()]
                line = json.dumps(record, separators=(",", ":")).encode()
                changed[customer.strip()] += 1
            out.append(line + b"\n")
        return b"".join(out), changed

    with open(path, "rb") as f:
        head = f.read()
        cut = head.rfind(b"\n") + 1  # complete lines only; the rest is read again under the lock
        body, changed = rewrite(head[:cut])
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, os.fstat(f.fileno()).st_mode & 0o777)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
                fcntl.flock(f, fcntl.LOCK_EX)  # released when ``f`` closes, after the rename
                f.seek(cut)
                tail, tail_changed = rewrite(f.read())
                changed += tail_changed
                if not changed:
                    Path(tmp).unlink()
                    return changed
                out.write(tail)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return changed
