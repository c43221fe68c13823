"""The exposure log: one JSON line per decision, appended durably.

Each request's records are written with one ``write`` on a file opened with ``O_APPEND`` before the
request is answered: the kernel holds them, so an acknowledged record survives the process being
killed. With ``fsync=True`` (``SENDWISE_EXPOSURE_FSYNC=true``) each write is also forced to disk, which
survives a power cut too and costs a disk flush per request.
A process killed mid-write can leave at most one torn last line; :func:`read_exposures` skips it
(a line that does not end in a newline or does not parse). Records hold the customer id and no
other personal data.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


class ExposureLog:
    """Append-only JSON-lines file shared by the requests of one worker."""

    def __init__(self, path: Path | str, fsync: bool = False) -> None:
        self.path, self.fsync = Path(path), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()
        if _ends_torn(self.path):  # a killed writer left half a line: start ours on a new one
            os.write(self._fd, b"\n")
            os.fsync(self._fd)

    def append(self, records: list[dict]) -> None:
        """Write ``records`` (and fsync when asked); returns when the kernel has them."""
        if not records:
            return
        data = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records).encode()
        with self._lock:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write: finish it before anything else is appended
                written += os.write(self._fd, data[written:])
            if self.fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _ends_torn(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


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
