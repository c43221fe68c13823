"""Forgotten customers, as the running service sees them: the data directory's tombstones
(``sendwise privacy forget``), re-read whenever the file changes.

Checking costs one ``stat`` per request, plus one hash per customer id while any tombstone exists.
A forgotten customer is answered as an unknown one, and the exposure log records them as
:data:`FORGOTTEN`, never by their id.
"""

from __future__ import annotations

import os
from pathlib import Path

from features.io import TOMBSTONES_FILE, read_tombstones
from features.tombstones import Tombstones
from serving.exposures import FORGOTTEN


class ForgottenCustomers:
    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / TOMBSTONES_FILE
        self._stamp: tuple | None = None
        self._tombstones = Tombstones()
        self._refresh()

    def _refresh(self) -> Tombstones:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._tombstones = read_tombstones(self.data_dir) if stamp else Tombstones()
            self._stamp = stamp
        return self._tombstones

    def mask(self, customer_ids: list[str]) -> list[str]:
        """``customer_ids`` with each forgotten one replaced by :data:`FORGOTTEN`."""
        tombstones = self._refresh()
        if not tombstones:
            return customer_ids
        return [FORGOTTEN if c in tombstones else c for c in customer_ids]
