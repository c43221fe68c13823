"""Tombstones: the customers of a data directory that were forgotten (``sendwise privacy forget``).

A tombstone never holds the customer id itself, only ``sha256(salt + ":" + customer_id)`` with a
random salt of the directory: enough to recognise the customer when their rows come back (a later
import, a new export of the shop, a request to the service), not enough to list who was forgotten.
Anyone holding the file can still test a guessed id; that is what it is for. The file lives in
``DIR/_privacy/tombstones.json`` (read and written by :mod:`features.io`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

import duckdb

from features.errors import InputError

DIGESTS_TABLE = "_forgotten_digests"


@dataclass(frozen=True)
class Tombstones:
    salt: str = field(default_factory=lambda: secrets.token_hex(16))
    digests: frozenset[str] = frozenset()

    def digest(self, customer_id: str) -> str:
        return hashlib.sha256(f"{self.salt}:{customer_id}".encode()).hexdigest()

    def __contains__(self, customer_id: object) -> bool:
        return isinstance(customer_id, str) and bool(self.digests) and self.digest(customer_id) in self.digests

    def __len__(self) -> int:
        return len(self.digests)

    def adding(self, customer_ids: Iterable[str]) -> Tombstones:
        """These tombstones plus ``customer_ids``."""
        return Tombstones(self.salt, self.digests | {self.digest(c) for c in customer_ids})

    def to_dict(self) -> dict:
        return {"salt": self.salt, "digests": sorted(self.digests)}

    @classmethod
    def from_dict(cls, data: dict) -> Tombstones:
        salt = data.get("salt")
        if not isinstance(salt, str) or not salt or not all(c in "0123456789abcdef" for c in salt):
            raise InputError(f"the tombstones' salt must be a hex string; got {salt!r}")
        return cls(salt, frozenset(data.get("digests", [])))

    def forgotten_sql(self, con: duckdb.DuckDBPyConnection, column: str) -> str:
        """A SQL condition, true where ``column`` (compared as trimmed text, as the contract reads
        ids) is a forgotten customer; registers the digests in ``con`` first."""
        con.execute(f"CREATE OR REPLACE TEMP TABLE {DIGESTS_TABLE} (digest VARCHAR)")
        if self.digests:
            con.executemany(f"INSERT INTO {DIGESTS_TABLE} VALUES (?)", [[d] for d in sorted(self.digests)])
        return (f"sha256('{self.salt}:' || trim(CAST(\"{column}\" AS VARCHAR))) "
                f"IN (SELECT digest FROM {DIGESTS_TABLE})")
