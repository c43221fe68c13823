"""Which column of a shop's file holds which contract column: ``--map contract=source``.

A mapping is contract column -> source column, e.g. ``{"ordered_at": "Paid at", "customer_id": "Email"}``
(on the command line ``--map ordered_at="Paid at" --map customer_id=Email``, in ``sendwise.yaml``
``import: {map: {ordered_at: Paid at}}``). The contract columns a mapping may name are those of an
order line (:data:`MAPPABLE`): the orders table's, a product's name, category and links, a
customer's country and email consent. Errors name what was given, what is valid and the file's
columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from features.errors import InputError
from features.importers.order_lines import LINE_COLUMNS, ORDER_COLUMNS
from features.importers.report import unknown_column_hint

MAPPABLE = LINE_COLUMNS
EXAMPLE = '--map ordered_at="Paid at" --map customer_id=Email'


def parse_mapping(items: Iterable[str] | None) -> dict[str, str]:
    """``["contract=source", ...]`` (the ``--map`` options) as a mapping; the source column is the text
    after the first ``=``, both sides trimmed. A malformed item, an unknown contract column or one
    given twice is an InputError."""
    mapping: dict[str, str] = {}
    for item in items or ():
        contract, sep, source = str(item).partition("=")
        contract, source = contract.strip(), source.strip()
        if not sep or not contract or not source:
            raise InputError(f"--map {item!r}: expected CONTRACT_COLUMN=SOURCE_COLUMN, e.g. {EXAMPLE}.")
        if contract in mapping and mapping[contract] != source:
            raise InputError(f"--map {contract} is given twice ({mapping[contract]!r} and {source!r}); "
                             "give each contract column once.")
        mapping[contract] = source
    return check_mapping(mapping)


def check_mapping(mapping: Mapping[str, str] | None) -> dict[str, str]:
    """``mapping`` as a plain dict, its contract columns checked: an unknown one is an InputError
    listing the valid ones."""
    mapping = dict(mapping or {})
    unknown = [c for c in mapping if c not in MAPPABLE]
    if unknown:
        raise InputError(
            f"unknown contract column(s) {', '.join(repr(c) for c in unknown)} in the column mapping; expected "
            f"one of {', '.join(MAPPABLE)} (order lines: {', '.join(ORDER_COLUMNS)}).")
    bad = {c: v for c, v in mapping.items() if not isinstance(v, str) or not v.strip()}
    if bad:
        raise InputError(f"the column mapping gives no source column for {', '.join(bad)}; expected e.g. {EXAMPLE}.")
    return {c: v.strip() for c, v in mapping.items()}


def mapped_columns(src: Path, found: Sequence[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """``mapping`` (checked) after making sure each source column it names is a column of ``src``
    (``found``); an InputError names the missing one and lists the file's columns."""
    for contract, source in mapping.items():
        if source not in found:
            raise InputError(
                f"{src}: no column {source!r} (mapped to {contract}).{unknown_column_hint(source, found)} "
                f"The file's columns: {', '.join(found)}.")
    return dict(mapping)


def require_order_columns(src: Path, found: Sequence[str], sources: Mapping[str, str], what: str) -> None:
    """An InputError naming the order columns that ``sources`` (contract -> source column) lacks,
    how to map them and the file's columns."""
    missing = [c for c in ORDER_COLUMNS if c not in sources]
    if missing:
        raise InputError(
            f"{src}: no column for {', '.join(missing)} ({what} needs {', '.join(ORDER_COLUMNS)}). Map each to a "
            f"column of the file (--map {missing[0]}=COLUMN, or import: map: in sendwise.yaml) or name a "
            f"column so. The file's columns: {', '.join(found)}.")
