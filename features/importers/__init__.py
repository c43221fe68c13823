"""Importers: a shop's export, or a public dataset, to the data contract. One entry point,
:func:`run_import`, for the commands (``sendwise data import <format>``) and a project's
``sendwise.yaml`` (``import: {format: shopify, source: orders_export.csv, map: {...}}``).

Formats (:class:`ImportFormat`): ``online-retail`` (UCI Online Retail, either layout, told from the
header), ``online-retail-ii`` (UCI Online Retail II only), ``shopify`` (a Shopify orders export),
``csv`` (any CSV of order lines, by a column mapping) and ``movielens`` (ratings, for benchmarks).
Every importer writes parquet tables with timestamps as UTC instants and a rejects file, and returns
an :class:`ImportReport`; naive source times are local times in the ``timezone`` given (see
:mod:`features.timezones`). docs/importers.md tells a user the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from features.errors import InputError
from features.importers.mapped_csv import import_csv
from features.importers.mapping import MAPPABLE, check_mapping, parse_mapping
from features.importers.movielens import import_movielens
from features.importers.report import ImportReport
from features.importers.shopify import import_shopify
from features.importers.uci_retail import RetailLayout, import_online_retail
from features.io import Encoding

__all__ = ["MAPPABLE", "ImportFormat", "ImportReport", "import_format", "parse_mapping", "run_import"]


class ImportFormat(StrEnum):
    ONLINE_RETAIL = "online-retail"
    ONLINE_RETAIL_II = "online-retail-ii"
    SHOPIFY = "shopify"
    CSV = "csv"
    MOVIELENS = "movielens"


MAPPED_FORMATS = (ImportFormat.SHOPIFY, ImportFormat.CSV)  # formats a column mapping applies to
DEFAULT_MIN_RATING = 4.0


def import_format(fmt: ImportFormat | str) -> ImportFormat:
    """``fmt`` as an :class:`ImportFormat`; anything else is an InputError listing the formats."""
    try:
        return ImportFormat(str(fmt).strip().lower())
    except ValueError:
        raise InputError(f"unknown import format {fmt!r}; expected one of "
                         f"{', '.join(f.value for f in ImportFormat)}.") from None


def run_import(fmt: ImportFormat | str, source: Path | str, out: Path | str, *,
               mapping: Mapping[str, str] | None = None, timezone: str | None = None,
               encoding: Encoding | str = Encoding.UTF_8, min_rating: float | None = None) -> ImportReport:
    """Import ``source`` (a file in format ``fmt``) into the contract directory ``out``.

    ``mapping`` (contract column -> source column) is for ``csv`` (required columns not named so) and
    ``shopify`` (replacing its defaults); ``timezone`` (an IANA name, None or UTC: UTC) is the zone of
    the source's times written without one; ``min_rating`` is for ``movielens`` (default 4.0). An
    option a format does not take is an InputError, as are an unknown format, zone or column.
    """
    fmt = import_format(fmt)
    mapping = check_mapping(mapping)
    if mapping and fmt not in MAPPED_FORMATS:
        raise InputError(f"a column mapping applies to the {' and '.join(MAPPED_FORMATS)} formats; {fmt} has a "
                         f"fixed layout. Remove the mapping, or import the file as csv with it.")
    if min_rating is not None and fmt is not ImportFormat.MOVIELENS:
        raise InputError(f"min_rating applies to the movielens format, not {fmt}.")
    match fmt:
        case ImportFormat.ONLINE_RETAIL:
            return import_online_retail(source, out, encoding, timezone)
        case ImportFormat.ONLINE_RETAIL_II:
            return import_online_retail(source, out, encoding, timezone, layout=RetailLayout.ONLINE_RETAIL_II)
        case ImportFormat.SHOPIFY:
            return import_shopify(source, out, mapping, encoding, timezone)
        case ImportFormat.CSV:
            return import_csv(source, out, mapping, encoding, timezone)
        case ImportFormat.MOVIELENS:
            rating = DEFAULT_MIN_RATING if min_rating is None else min_rating
            return import_movielens(source, out, rating, encoding, timezone)
    raise AssertionError(fmt)
