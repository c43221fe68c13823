"""All file input and output of the features package: contract directories, rejects, parquet.

Before DuckDB reads a file, :func:`check_file` looks at its first bytes: a file that is not what its
name says (an Excel workbook called ``.csv``, text called ``.parquet``, another encoding, binary
data) is a :class:`ContractError` naming the file, what it is and what is expected, never DuckDB's
parser error. :func:`refuse_overwriting_inputs` keeps every command from writing over what it reads.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import os
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import duckdb
import pandas as pd

from features.errors import InputError
from features.event_store import EventSource, source_frames
from features.links import safe_http_url
from features.redis_log import RedisLocation
from features.schema import CUSTOMER_ID, IMAGE_URL, ORDER_ID, SPECS, URL, Table, sql_literal
from features.tables import Tables, canonical_select, create_empty, new_connection
from features.timezones import check_timezone
from features.tombstones import Tombstones
from features.validate import ROW_ID, ContractError, TableReport, now_utc, validate_raw

SUFFIXES = (".parquet", ".csv", ".csv.gz")
REJECTS_DIRNAME = "_rejects"
CSV_READ_OPTIONS = "all_varchar = true, header = true"  # every CSV is read as text with a header row
TOMBSTONES_FILE = Path("_privacy") / "tombstones.json"
SAMPLE_BYTES = 1 << 16  # how much of a file is looked at before DuckDB reads it


class Encoding(StrEnum):
    """Text encodings a CSV may be read in (those DuckDB's CSV reader knows)."""

    UTF_8 = "utf-8"
    LATIN_1 = "latin-1"
    UTF_16 = "utf-16"


@dataclass
class ValidationReport:
    tables: list[TableReport]
    rejects_dir: Path | None
    warnings: list[str] = field(default_factory=list)
    forgotten: dict[str, int] = field(default_factory=dict)  # rows of forgotten customers skipped, per table
    event_log: dict[Table, int] = field(default_factory=dict)  # rows added from the event log, per table

    @property
    def rejected(self) -> int:
        return sum(t.rejected for t in self.tables)


def find_table_files(data_dir: Path) -> dict[Table, Path]:
    """The file for each contract table in ``data_dir``; ``orders`` is required."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ContractError(f"{data_dir}: not a directory. Expected a directory of contract tables.")
    found: dict[Table, Path] = {}
    for table in Table:
        matches = [data_dir / f"{table.value}{s}" for s in SUFFIXES if (data_dir / f"{table.value}{s}").exists()]
        if len(matches) > 1:
            raise ContractError(
                f"{data_dir}: both {matches[0].name} and {matches[1].name} exist; keep one file per table."
            )
        if matches:
            found[table] = matches[0]
    if Table.ORDERS not in found:
        raise ContractError(
            f"{data_dir}: no orders table. Expected orders.parquet, orders.csv or orders.csv.gz "
            f"(columns: {', '.join(SPECS[Table.ORDERS].column_names)})."
        )
    return found


def read_raw(con: duckdb.DuckDBPyConnection, path: Path, name: str,
             encoding: Encoding | str = Encoding.UTF_8) -> None:
    """Create view ``name`` over ``path`` with a 1-based ``_row`` column; CSV is read as text.

    The file is checked first (:func:`check_file`); an error DuckDB still meets (a broken line far
    into the file) is a ContractError in the same words."""
    encoding = Encoding(encoding)
    check_file(path, encoding)
    p = sql_literal(path)
    try:
        if path.name.endswith(".parquet"):
            scan = f"read_parquet({p}, file_row_number = true)"
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW {name} AS "
                f"SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS {ROW_ID} FROM {scan}"
            )
        else:
            options = "" if encoding is Encoding.UTF_8 else f", encoding = '{encoding.value}'"
            scan = f"read_csv({p}, {CSV_READ_OPTIONS}{options})"
            con.execute(  # materialised, so that row numbers are fixed once
                f"CREATE OR REPLACE TEMP TABLE {name} AS "
                f"SELECT *, row_number() OVER () AS {ROW_ID} FROM {scan}"
            )
    except duckdb.Error as exc:
        raise read_error(path, exc, encoding) from exc
    if not path.name.endswith(".parquet"):
        _check_fields(con, name, path, encoding)


def _check_fields(con: duckdb.DuckDBPyConnection, name: str, path: Path, encoding: Encoding) -> None:
    """When some lines have more or fewer fields than the header, DuckDB's sniffer may read the file as
    one column, or take a later line for the header; say which line is wrong instead of letting the
    header pass for one column's name (or vanish). A one-field first line may be a title: skipped."""
    columns = [c for c in con.table(name).columns if c != ROW_ID]
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        _check_field_counts(opener, path, encoding, len(columns))
    except UnicodeError:  # e.g. UTF-16 without a byte-order mark, which DuckDB read: nothing to say
        return


def _check_field_counts(opener: Callable, path: Path, encoding: Encoding, n_columns: int) -> None:
    with opener(path, "rt", encoding="utf-8-sig" if encoding is Encoding.UTF_8 else encoding.value,
                errors="replace", newline="") as fh:
        first = fh.readline()
        delimiter = max(",;\t|", key=first.count)
        if not first.count(delimiter):
            return
        fh.seek(0)
        rows = csv.reader(fh, delimiter=delimiter)
        header = next(rows, [])
        if len(header) == n_columns:
            return
        for row in rows:
            if row and len(row) != len(header):
                raise ContractError(
                    f"{path}: line {rows.line_num} has {len(row)} fields where the header has {len(header)}. "
                    f"Expected every line to have the header's fields; a value holding the delimiter "
                    f"({delimiter!r}) must be in double quotes.")


# What a file is, from its first bytes: (magic, description, what to do). A zip is looked into.
_MAGIC = (
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel workbook (.xls) or another Office document",
     "export it as CSV (UTF-8)"),
    (b"PAR1", "a Parquet file", "name it with .parquet"),
    (b"\x1f\x8b", "gzip-compressed", "name it with .csv.gz"),
    (b"%PDF", "a PDF document", "export the table as CSV"),
    (b"\x89PNG", "a PNG image", "export the table as CSV"),
    (b"\xff\xd8\xff", "a JPEG image", "export the table as CSV"),
    (b"SQLite format 3\x00", "an SQLite database", "export the table as CSV"),
    (b"BZh", "bzip2-compressed", "decompress it (or compress it with gzip as .csv.gz)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it (or compress it with gzip as .csv.gz)"),
    (b"(\xb5/\xfd", "zstd-compressed", "decompress it (or compress it with gzip as .csv.gz)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "extract the CSV from it"),
    (b"ARROW1", "an Arrow/Feather file", "write it as Parquet or CSV"),
)


def _describe_zip(path: Path) -> tuple[str, str]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            mimetype = z.read("mimetype").decode("ascii", "replace") if "mimetype" in names else ""
    except (zipfile.BadZipFile, OSError, KeyError):
        names, mimetype = [], ""
    if any(n.startswith("xl/") for n in names):
        return "an Excel workbook", "export it as CSV (UTF-8) from Excel (File > Save As > CSV UTF-8)"
    if "opendocument.spreadsheet" in mimetype:
        return "an OpenDocument spreadsheet", "export it as CSV (UTF-8)"
    if any(n.startswith("word/") for n in names) or "opendocument.text" in mimetype:
        return "a word-processor document", "export the table as CSV"
    return "a zip archive", "unzip it and point at the CSV inside (or compress it with gzip as .csv.gz)"


def _identify(head: bytes, path: Path | None) -> tuple[str, str] | None:
    """(what the bytes are, what to do) for a known non-CSV format, else None."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _describe_zip(path) if path is not None else ("a zip archive", "unzip it")
    for magic, what, todo in _MAGIC:
        if head.startswith(magic):
            return what, todo
    start = head.lstrip()[:512].lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return "a web page (HTML)", "download the file itself, not the page that links to it"
    if start.startswith(b"<?xml") and b"urn:schemas-microsoft-com:office:spreadsheet" in head:
        return "an Excel XML spreadsheet", "export it as CSV (UTF-8)"
    return None


def _looks_like_utf16(sample: bytes) -> bool:
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    even, odd = sample[0::2], sample[1::2]
    return len(sample) >= 4 and max(even.count(0) / max(len(even), 1), odd.count(0) / max(len(odd), 1)) > 0.4


def _is_binary(sample: bytes) -> bool:
    """NUL bytes, or more control characters than text ever has."""
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 0x20 and b not in (0x09, 0x0A, 0x0C, 0x0D))
    return control > max(2, len(sample) // 100)


def check_file(path: Path, encoding: Encoding | str = Encoding.UTF_8) -> None:
    """Raise a ContractError naming ``path``, what it is and what is expected, when its first bytes
    show it is not a table DuckDB can read under its name: Parquet for ``.parquet``, gzip-compressed
    CSV for ``.gz``, CSV text in ``encoding`` otherwise."""
    path, encoding = Path(path), Encoding(encoding)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(SAMPLE_BYTES)
            if size > SAMPLE_BYTES:
                fh.seek(-4, os.SEEK_END)
            tail = fh.read()[-4:] if size > SAMPLE_BYTES else head[-4:]
    except OSError as exc:
        raise ContractError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    if path.name.endswith(".parquet"):
        if head.startswith(b"PAR1") and tail == b"PAR1" and size >= 12:
            return
        if head.startswith(b"PAR1"):
            raise ContractError(f"{path}: a damaged or truncated Parquet file (no footer). Write it again.")
        raise ContractError(f"{path}: not a Parquet file; it is {_what(head, path, encoding)}. Expected Parquet, "
                            "or name a CSV file .csv (.csv.gz when gzip-compressed).")
    if path.name.endswith(".gz"):
        if not head.startswith(b"\x1f\x8b"):
            plain = path.name.removesuffix(".gz")
            raise ContractError(f"{path}: not gzip-compressed; it is {_what(head, path, encoding)}. "
                                f"Name it {plain} or compress it with gzip.")
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(SAMPLE_BYTES)
        except (OSError, EOFError, zlib.error) as exc:
            raise ContractError(f"{path}: a damaged or truncated gzip file ({exc}). Compress the CSV again.") from exc
        _check_text(path, head, encoding, None)
        return
    _check_text(path, head, encoding, path)


def _what(head: bytes, path: Path, encoding: Encoding) -> str:
    """A few words for what ``head`` is, for a file whose name promised something else."""
    known = _identify(head, path)
    if known:
        return known[0]
    if not head.strip():
        return "empty"
    if _is_binary(head) and not (encoding is Encoding.UTF_16 or _looks_like_utf16(head)):
        return "binary data"
    return "CSV or other text"


def _check_text(path: Path, sample: bytes, encoding: Encoding, container: Path | None) -> None:
    """``sample``, the first bytes of ``path``'s CSV text, is text in ``encoding`` with a header."""
    known = _identify(sample, container)
    if known:
        what, todo = known
        if what == "gzip-compressed" and container is not None:
            todo = f"name it {path.name}.gz"
        elif what == "a Parquet file":
            todo = f"name it {path.name.split('.')[0]}.parquet"
        raise ContractError(f"{path}: {what}, not CSV text. Expected a CSV file: {todo}.")
    if not sample.strip(b" \t\r\n\x00\xef\xbb\xbf\xff\xfe"):
        raise ContractError(f"{path}: empty. Expected CSV text with a header row, then one row per line.")
    if encoding is not Encoding.UTF_16 and _looks_like_utf16(sample):
        raise ContractError(f"{path}: UTF-16 text, not UTF-8. Re-save it as UTF-8, or pass --encoding utf-16 "
                            "to read it as it is.")
    if _is_binary(sample) and encoding is not Encoding.UTF_16:
        raise ContractError(f"{path}: binary data, not CSV text. Expected a CSV file (text, one row per line).")
    if encoding is Encoding.UTF_8:
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            decoder.decode(sample, final=len(sample) < SAMPLE_BYTES)
        except UnicodeDecodeError as exc:
            line = sample.count(b"\n", 0, exc.start) + 1
            raise ContractError(_not_utf8(path, f"byte 0x{sample[exc.start]:02X} on line {line}")) from exc


def _not_utf8(path: Path, where: str) -> str:
    return (f"{path}: not UTF-8 ({where}). Re-save it as UTF-8, or pass --encoding latin-1 (Windows and "
            "older Excel CSV) or --encoding utf-16 to read it as it was written.")


def read_error(path: Path, exc: duckdb.Error, encoding: Encoding | str = Encoding.UTF_8) -> ContractError:
    """A ContractError in the user's words for what DuckDB met reading ``path`` (the line and the
    problem, without DuckDB's advice on its own options)."""
    text = str(exc)
    line = re.search(r"CSV Error on Line: (\d+)", text)
    where = f"line {line.group(1)}" if line else "a line"
    fields = re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", text)
    if "Invalid unicode" in text or "not utf-8 encoded" in text:
        return ContractError(_not_utf8(path, f"on {where}"))
    if fields:
        expected, found = fields.groups()
        return ContractError(f"{path}: {where} has {found} fields where the header has {expected}. Expected "
                             "every line to have the header's fields; a value holding the delimiter must be "
                             'in double quotes ("a, b").')
    if "unterminated quote" in text:
        return ContractError(f"{path}: {where} opens a double quote that is never closed. Close it, or double "
                             'a quote inside a quoted value ("say ""hi""").')
    first = next((ln for ln in text.splitlines() if ln.strip()), text)
    first = re.sub(r"^[A-Za-z ]*Error: ", "", first)
    if path.name.endswith(".parquet"):
        return ContractError(f"{path}: a damaged Parquet file, or one DuckDB cannot read ({first}). Write it again.")
    if path.name.endswith(".gz") and re.search("gzip|zlib|decompress", text, re.IGNORECASE):
        return ContractError(f"{path}: a damaged or truncated gzip file. Compress the CSV again.")
    return ContractError(f"{path}: could not be read as a CSV table ({first}).")


def load_data_dir(
    data_dir: Path | str, rejects_dir: Path | str | None = None, encoding: Encoding | str = Encoding.UTF_8,
    now: datetime | None = None, timezone: str | None = None, event_log: EventSource | str | None = None,
) -> tuple[Tables, ValidationReport]:
    """Read and validate a contract directory.

    Rejected rows are written to ``rejects_dir`` (default ``<data_dir>/_rejects``) as
    ``<table>.csv`` with ``source_row`` and ``reason``; tables without rejects write no file. A
    ``rejects_dir`` that is or holds a table of ``data_dir`` is refused before anything is read.
    Rows of customers with a tombstone in the directory (``sendwise privacy forget``) are skipped
    before validation, counted in ``forgotten`` and written nowhere. CSV files are read in
    ``encoding``. Timestamps without a zone, in every table, are local times in ``timezone`` (an IANA
    name such as ``Europe/London``; None or ``UTC``: they are UTC) and are converted to naive UTC;
    timestamps with an offset keep it (see :mod:`features.timezones`). Timestamps after ``now``
    (default: now, UTC), after conversion, are rejected. An orders file without rows is an error, and
    so is an unknown ``timezone``, before anything is read.

    ``event_log``, a file (:mod:`features.event_log`; skipped when it does not exist) or a log in Redis
    (a :class:`~features.redis_log.RedisLocation`, :mod:`features.event_store`), adds its events and
    orders after the directory's validation (its events were validated when taken), except those of
    forgotten customers, those after ``now``, orders whose ``order_id`` the orders table holds and
    events equal to one of the events table (the shop's export already has them); the rows added per
    table are in ``event_log`` of the report, the others counted in its warnings.
    """
    zone = check_timezone(timezone)
    data_dir = Path(data_dir)
    if rejects_dir is not None:
        refuse_overwriting_inputs(rejects_dir, data_dir=data_dir, option="--rejects")
    files = find_table_files(data_dir)
    tombstones = read_tombstones(data_dir)
    con = new_connection()
    reports, forgotten = [], {}
    for table in Table:
        if table in files:
            raw = f"_raw_{table.value}"
            read_raw(con, files[table], raw, encoding)
            if tombstones and CUSTOMER_ID in con.table(raw).columns:
                forgotten[table.value] = skip_forgotten(con, raw, tombstones)
            try:
                reports.append(validate_raw(con, SPECS[table], raw, str(files[table]), now=now, timezone=zone))
            except duckdb.Error as exc:  # e.g. a broken line DuckDB meets late, or a damaged parquet page
                raise read_error(files[table], exc, encoding) from exc
            if table is Table.ORDERS and reports[-1].read == 0 and not forgotten.get(table.value):
                raise ContractError(
                    f"{files[table]}: orders has no rows (only a header). Expected one row per order line "
                    f"with {', '.join(SPECS[Table.ORDERS].column_names)}."
                )
        else:
            create_empty(con, SPECS[table])
    tables = Tables(con)
    written = write_rejects(tables, reports, Path(rejects_dir) if rejects_dir else data_dir / REJECTS_DIRNAME)
    added, warnings = {}, []
    if isinstance(event_log, str):
        event_log = Path(event_log)
    if isinstance(event_log, RedisLocation) or (event_log is not None and event_log.exists()):
        added, warnings = add_event_log(con, event_log, tombstones, now or now_utc(), forgotten)
    # tables with rows, for the cross-table checks (which read only the keys)
    present = {**files, **dict.fromkeys(added, Path(str(event_log)))}
    warnings = cross_table_warnings(tables, present) + unsafe_link_warnings(tables) + warnings
    if sum(forgotten.values()):
        warnings.append(f"{sum(forgotten.values()):,} row(s) of forgotten customers skipped "
                        f"({data_dir / TOMBSTONES_FILE})")
    return tables, ValidationReport(reports, written, warnings, forgotten, added)


def add_event_log(con: duckdb.DuckDBPyConnection, source: EventSource, tombstones: Tombstones, now: datetime,
                  forgotten: dict[str, int]) -> tuple[dict[Table, int], list[str]]:
    """Add the rows of the event log at ``source`` (a file or Redis) to the validated ``events`` and
    ``orders`` of ``con`` (see :func:`load_data_dir`); returns the rows added per table and warnings for the rows left out.
    Rows of forgotten customers are counted in ``forgotten``."""
    added, warnings = {}, []
    for table, frame in source_frames(source).items():
        if frame.empty:
            continue
        spec, log = SPECS[table], f"_log_{table.value}"
        con.register(f"{log}_frame", frame)
        con.execute(f"CREATE TEMP TABLE {log} AS {canonical_select(spec, f'{log}_frame', set(frame.columns))}")
        con.unregister(f"{log}_frame")
        if tombstones:
            forgotten[table.value] = forgotten.get(table.value, 0) + skip_forgotten(con, log, tombstones)
        late = con.execute(f"DELETE FROM {log} WHERE {spec.time_column} > $now", {"now": now}).fetchall()[0][0]
        if late:
            warnings.append(f"{late:,} {table.value} row(s) of the event log {source} are after {now:%Y-%m-%dT%H:%M:%S}Z, "
                            "the moment the data was read: left out this time")
        if table is Table.ORDERS:  # the export holds the order: it is one order, not two
            known, what = f"{ORDER_ID} IN (SELECT {ORDER_ID} FROM {table.value})", "orders the orders table holds"
        else:
            same = " AND ".join(f"d.{c} IS NOT DISTINCT FROM l.{c}" for c in spec.column_names)
            known, what = f"EXISTS (SELECT 1 FROM {table.value} d WHERE {same})", "events the events table holds"
        dropped = con.execute(f"DELETE FROM {log} l WHERE {known}").fetchall()[0][0]
        if dropped:
            warnings.append(f"{dropped:,} {table.value} row(s) of the event log {source} left out: {what} already")
        kind = "VIEW" if con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?",
                                     [table.value]).fetchall()[0][0] else "TABLE"
        con.execute(f"ALTER {kind} {table.value} RENAME TO _directory_{table.value}")
        con.execute(f"CREATE TEMP VIEW {table.value} AS SELECT * FROM _directory_{table.value} "
                    f"UNION ALL BY NAME SELECT * FROM {log}")
        added[table] = con.execute(f"SELECT count(*) FROM {log}").fetchall()[0][0]
    return added, warnings


def table_paths(data_dir: Path | str) -> dict[Path, Table]:
    """Every path a table of ``data_dir`` is read from, whether the file exists or not."""
    return {Path(data_dir) / f"{t.value}{s}": t for t in Table for s in SUFFIXES}


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # also a hard link
    except OSError:
        return False


def refuse_overwriting_inputs(out: Path | str, inputs: Iterable[Path | str] = (), data_dir: Path | str | None = None,
                              option: str = "--out") -> None:
    """Raise an InputError, before anything is written, when writing ``out`` (a file, or a directory
    written into) could destroy what the command reads.

    ``out`` is refused when it is one of ``inputs`` (the same file by any link), holds one (a
    directory above it), or, for ``data_dir``: is the directory, holds it, is where one of its tables
    is read from (``DIR/orders.csv``, even when that file does not exist yet: the next read would take
    it for a table) or holds its tombstones. Other paths inside ``data_dir`` (``DIR/_rejects``,
    ``DIR/features.parquet``) are fine. Paths are compared after resolving links.
    """
    target = _real(out)
    checks: list[tuple[Path, str]] = [(Path(p), "an input of this command") for p in inputs]
    if data_dir is not None:
        data_dir = Path(data_dir)
        checks.append((data_dir, "the data directory this command reads"))
        read_from = {path: f"the {table.value} table" for path, table in table_paths(data_dir).items()}
        read_from[data_dir / TOMBSTONES_FILE] = "the tombstones"
        for path, what in read_from.items():
            if path.exists():
                checks.append((path, f"{what} this command reads"))
            elif _real(path) == target:
                raise InputError(
                    f"{option} {out} is where {what} of {data_dir} is read from: the output would become an "
                    f"input of every command reading {data_dir}. Write it elsewhere (another name or folder).")
    for path, what in checks:
        if not path.exists():
            continue
        real = _real(path)
        if real == target or _same(path, Path(out)):
            same = "" if Path(out) == path else f" {path},"
            raise InputError(f"{option} {out} is{same} {what}: writing it would destroy the input. "
                             "Write it elsewhere (another name or folder).")
        if real.is_relative_to(target):
            raise InputError(f"{option} {out} holds {path}, {what}: writing into it could destroy the input. "
                             "Write it to a folder that holds no input.")


def refuse_mixed_tables(out_dir: Path | str, writes: Iterable[Table], suffix: str = ".parquet",
                        option: str = "--out") -> None:
    """Raise an InputError when ``out_dir`` holds a table in another format than ``suffix`` for one of
    the tables a command ``writes`` there: the directory would end with two files for one table."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{option} {out_dir} is a file; expected a directory (it is created if missing).")
    for table in writes:
        for other in SUFFIXES:
            path = out_dir / f"{table.value}{other}"
            if other != suffix and path.exists():
                raise InputError(
                    f"{option} {out_dir} already holds {path}; writing {table.value}{suffix} next to it would "
                    f"leave two {table.value} tables. Write to a new folder, or move {path.name} away first.")


def skip_forgotten(con: duckdb.DuckDBPyConnection, raw: str, tombstones: Tombstones,
                   column: str = CUSTOMER_ID) -> int:
    """Replace relation ``raw`` by its rows whose ``column`` is not a forgotten customer; returns how
    many rows were left out."""
    condition = tombstones.forgotten_sql(con, column)
    n = con.execute(f"SELECT count(*) FROM {raw} WHERE {condition}").fetchall()[0][0]
    if not n:
        return 0
    is_view = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [raw]).fetchall()[0][0]
    if is_view:  # a parquet file read in place: keep the rows that stay in a table of that name
        con.execute(f"CREATE TEMP TABLE {raw}_kept AS SELECT * FROM {raw} WHERE NOT ({condition})")
        con.execute(f"DROP VIEW {raw}")
        con.execute(f"ALTER TABLE {raw}_kept RENAME TO {raw}")
    else:
        con.execute(f"DELETE FROM {raw} WHERE {condition}")
    return n


def read_tombstones(data_dir: Path | str) -> Tombstones:
    """The tombstones of ``data_dir`` (empty, with a fresh salt, when there are none)."""
    path = Path(data_dir) / TOMBSTONES_FILE
    if not path.exists():
        return Tombstones()
    try:
        return Tombstones.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError, AttributeError) as exc:
        raise ContractError(f"{path}: not a tombstones file ({exc}). It is written by `sendwise privacy forget`; "
                            "restore it from a backup rather than deleting it, or forgotten customers come back.") from exc


def write_tombstones(data_dir: Path | str, tombstones: Tombstones) -> Path:
    path = Path(data_dir) / TOMBSTONES_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(tombstones.to_dict(), indent=1)))
    return path


def write_rejects(tables: Tables, reports: list[TableReport], rejects_dir: Path) -> Path | None:
    """Write ``<table>.csv`` for every table with rejects; returns the folder, or None if none."""
    with_rejects = [r for r in reports if r.rejected]
    if not with_rejects:
        return None
    try:
        rejects_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ContractError(f"cannot write rejects to {rejects_dir}: {exc}. Pass --rejects DIR "
                            "(`sendwise serve`: --state-dir DIR).") from exc
    for report in with_rejects:
        target = rejects_dir / f"{report.table}.csv"
        atomic_write(target, lambda tmp, t=report.table: tables.con.execute(
            f"COPY {t}_rejects TO {sql_literal(tmp)} (HEADER, DELIMITER ',')").fetchall())
    return rejects_dir


def unsafe_link_warnings(tables: Tables) -> list[str]:
    """Product links that are not absolute http(s) URLs: no email shows them (see features.links)."""
    products = tables.frame(Table.PRODUCTS)
    warnings = []
    for column in (URL, IMAGE_URL):
        values = products[column].dropna() if column in products else []
        unsafe = [v for v in values if safe_http_url(v) is None]
        if unsafe:
            warnings.append(f"{len(unsafe):,} product {column} value(s) are not absolute http(s) URLs "
                            f"(e.g. {unsafe[0][:60]!r}); emails show those products without a link or image")
    return warnings


def cross_table_warnings(tables: Tables, files: dict[Table, Path]) -> list[str]:
    """Orders and events that reference customers or products missing from their tables."""
    warnings = []
    checks = [
        (Table.ORDERS, Table.CUSTOMERS, "customer_id"),
        (Table.EVENTS, Table.CUSTOMERS, "customer_id"),
        (Table.ORDERS, Table.PRODUCTS, "product_id"),
        (Table.EVENTS, Table.PRODUCTS, "product_id"),
    ]
    for child, parent, key in checks:
        if child not in files or parent not in files:
            continue
        n = tables.con.execute(
            f"""SELECT count(DISTINCT c.{key}) FROM {child.value} c
                ANTI JOIN {parent.value} p ON c.{key} = p.{key} WHERE c.{key} IS NOT NULL"""
        ).fetchall()[0][0]
        if n:
            warnings.append(f"{n:,} {key} value(s) in {child.value} are not in {parent.value}")
    return warnings


def atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``target``: a crash leaves the old file intact.

    A symlink is followed: its target is rewritten and the link stays. The file keeps its
    permissions; a new file gets the usual ones (0666 less the umask), not ``mkstemp``'s 0600.
    """
    target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else _default_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_parquet(frame: pd.DataFrame, target: Path | str) -> None:
    """Write ``frame`` to parquet atomically."""
    atomic_write(Path(target), lambda tmp: frame.to_parquet(tmp, index=False))


def write_tables(tables: Tables, out_dir: Path | str) -> dict[Table, int]:
    """Write every non-empty table as ``<table>.parquet`` in ``out_dir``; returns row counts.

    Timestamps are written as instants (parquet's UTC-adjusted timestamp, TIMESTAMP WITH TIME ZONE):
    a reader that takes naive times for a shop's local times (``load_data_dir(timezone=...)``) keeps
    them as they are instead of shifting them a second time."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for table in Table:
        n = tables.count(table)
        if n == 0:
            continue
        atomic_write(out_dir / f"{table.value}.parquet", lambda tmp, t=table: tables.con.execute(
            f"COPY ({_instants_select(tables.con, t.value)}) TO {sql_literal(tmp)} (FORMAT parquet, COMPRESSION zstd)"
        ).fetchall())
        counts[table] = n
    return counts


def _instants_select(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """SELECT of ``table`` with its naive (UTC) timestamps as TIMESTAMP WITH TIME ZONE."""
    rel = con.table(table)
    naive = [c for c, t in zip(rel.columns, rel.types, strict=True) if str(t) == "TIMESTAMP"]
    if not naive:
        return f"SELECT * FROM {table}"
    replaced = ", ".join(f"timezone('UTC', \"{c}\") AS \"{c}\"" for c in naive)
    return f"SELECT * REPLACE ({replaced}) FROM {table}"
