"""CSV files read as the loader reads them, and records cut out of them without changing anything else
(``sendwise privacy export`` and ``forget``).

The loader (:func:`features.io.read_raw`) reads a CSV with DuckDB's ``read_csv(..., all_varchar = true,
header = true)`` in the encoding of ``--encoding``: DuckDB's sniffer picks the delimiter (comma,
semicolon, tab, pipe...), quote, escape, line ending, comment character and leading lines to skip,
and renames a repeated header (``customer_id``, ``customer_id_1``). :class:`CsvFile` reads with
exactly those options, so the privacy commands see the rows, columns and values the loader sees.

Its encoding: UTF-8 when the text is UTF-8 (with or without a byte-order mark; every CSV sendwise
writes, rejects included), UTF-16 with a UTF-16 byte-order mark, otherwise the one given (the
shop's ``--encoding``: Latin-1, or UTF-16 without a mark, told by its NUL bytes).

:meth:`CsvFile.cut` removes records by cutting their text out of the file: every other byte stays
as it was (encoding, byte-order mark, quoting, CRLF or LF line endings, header names repeated or
not, comments, blank lines); a ``.csv.gz`` is decompressed, cut and compressed again. Records are
located with Python's csv module under the dialect DuckDB's sniffer reports (``sniff_csv``), and
checked against DuckDB's reading before anything is written (as many records, the same number of
fields, the same value in the key column, and every field of the records cut): a file the two
read differently is refused, never half-edited.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow as pa

from features.errors import InputError
from features.io import CSV_READ_OPTIONS, Encoding, atomic_write
from features.schema import sql_literal

_EMPTY = "(empty)"  # how sniff_csv reports an option that is not set
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\n|\r)|[^\r\n]+\Z")  # a physical line with its ending


@dataclass(frozen=True)
class CsvDialect:
    """What DuckDB's sniffer found in a file, with the loader's options."""

    delimiter: str
    quote: str  # "" for none
    escape: str  # "" for none
    comment: str  # "" for none
    skip_rows: int  # lines before the header

    def reader_options(self, path: Path) -> dict:
        """The same dialect for Python's :func:`csv.reader`."""
        if len(self.delimiter) != 1 or len(self.quote) > 1 or len(self.escape) > 1:
            raise InputError(f"{path}: its delimiter {self.delimiter!r} (quote {self.quote!r}, escape "
                             f"{self.escape!r}) is not one character; the file cannot be edited in place. "
                             "Convert it to comma-separated (or to parquet) and run the command again.")
        if not self.quote:
            return {"delimiter": self.delimiter, "quoting": csv.QUOTE_NONE, "escapechar": self.escape or None}
        doubled = self.escape in ("", self.quote)  # "" inside a quoted field stands for one quote
        return {"delimiter": self.delimiter, "quotechar": self.quote, "doublequote": doubled,
                "escapechar": None if doubled else self.escape}


class _Record(NamedTuple):
    start: int  # first physical line
    end: int  # one past the last physical line
    fields: list[str]


class CsvFile:
    """One CSV file (``.csv`` or ``.csv.gz``): its text, the encoding it is read in, and the table
    DuckDB reads from it with the loader's options."""

    def __init__(self, path: Path | str, encoding: Encoding | str = Encoding.UTF_8) -> None:
        self.path = Path(path)
        data = self.path.read_bytes()
        self.compressed = self.path.name.endswith(".gz")
        self.raw = gzip.decompress(data) if self.compressed else data
        self._gzip_mtime = int.from_bytes(data[4:8], "little") if self.compressed else 0  # kept in a rewrite
        self.encoding, self.bom, self.codec = _encoding(self.path, self.raw, Encoding(encoding))

    def _options(self) -> str:
        return CSV_READ_OPTIONS + ("" if self.encoding is Encoding.UTF_8 else f", encoding = '{self.encoding.value}'")

    def _sql(self, function: str, columns: str = "*") -> str:
        return f"SELECT {columns} FROM {function}({sql_literal(self.path)}, {self._options()})"

    def read(self) -> pa.Table:
        """Every row as text, with the loader's column names; an empty file has no rows."""
        if not self.raw[len(self.bom):].strip(b" \t\r\n\x00"):
            return pa.table({})
        con = duckdb.connect()
        try:
            return con.sql(self._sql("read_csv")).to_arrow_table()
        except duckdb.Error as exc:
            raise InputError(f"{self.path}: could not be read as CSV in {self.encoding.value} ({exc}).") from exc
        finally:
            con.close()

    def sniff(self) -> CsvDialect:
        con = duckdb.connect()
        try:
            row = con.execute(self._sql("sniff_csv", "Delimiter, Quote, Escape, Comment, SkipRows")).fetchone()
        except duckdb.Error as exc:
            raise InputError(f"{self.path}: could not be read as CSV in {self.encoding.value} ({exc}).") from exc
        finally:
            con.close()
        delimiter, quote, escape, comment = ("" if v == _EMPTY else v for v in row[:4])
        return CsvDialect(delimiter, quote, escape, comment, int(row[4]))

    def cut(self, table: pa.Table, column: str, cut: Sequence[bool]) -> None:
        """Rewrite the file without the records where ``cut`` is true: ``table`` is what
        :meth:`read` returned and ``cut`` one flag per row, taken from ``column``. Everything else
        stays byte for byte (gzip compresses it again)."""
        try:
            text = self.raw[len(self.bom):].decode(self.codec)
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path}: not {self.encoding.value} text ({exc.reason} at byte {exc.start}).") from exc
        lines = _LINE.findall(text)
        header, records = self._parse(lines, self.sniff())

        def refuse(why: str) -> InputError:
            return InputError(f"{self.path}: Python's csv module and DuckDB read this file differently ({why}); "
                              "it was not changed. Convert it to comma-separated with quoted fields (or to "
                              "parquet) and run the command again.")

        if "".join(lines) != text:
            raise refuse("line endings")
        if len(header.fields) != table.num_columns or len(records) != table.num_rows:
            raise refuse(f"{len(records)} records of {len(header.fields)} fields, DuckDB {table.num_rows} rows of "
                         f"{table.num_columns} columns")
        position = table.column_names.index(column)
        keys = table.column(column).to_pylist()
        dropped = set()
        for row, (record, key, flag) in enumerate(zip(records, keys, cut, strict=True)):
            where = f"record {row + 1}, lines {record.start + 1}-{record.end}"
            if len(record.fields) != table.num_columns or record.fields[position].strip() != (key or "").strip():
                raise refuse(where)
            if flag:
                if record.fields != [v or "" for v in table.slice(row, 1).to_pylist()[0].values()]:
                    raise refuse(where)
                dropped.update(range(record.start, record.end))
        kept = "".join(line for i, line in enumerate(lines) if i not in dropped)
        if lines and not lines[-1].endswith(("\n", "\r")) and len(lines) - 1 in dropped:
            kept = kept.removesuffix("\r\n") if kept.endswith("\r\n") else kept[:-1]  # it ended without one
        out = self.bom + kept.encode(self.codec)
        if self.compressed:
            atomic_write(self.path, lambda tmp: Path(tmp).write_bytes(gzip.compress(out, mtime=self._gzip_mtime)))
        else:
            atomic_write(self.path, lambda tmp: Path(tmp).write_bytes(out))

    def _parse(self, lines: list[str], dialect: CsvDialect) -> tuple[_Record, list[_Record]]:
        """The header and data records of ``lines``, read as DuckDB does: ``skip_rows`` lines first,
        then the header; comment lines, and blank lines where there is more than one column, are
        not records."""
        try:
            records = (self._records_between_comments if dialect.comment else self._records)(lines, dialect)
        except csv.Error as exc:
            raise InputError(f"{self.path}: could not be read as CSV ({exc}).") from exc
        if not records:
            raise InputError(f"{self.path}: no header line.")
        return records[0], records[1:]

    def _records(self, lines: list[str], dialect: CsvDialect) -> list[_Record]:
        """Records and the physical lines each spans, from the reader's line count."""
        reader = csv.reader(iter(lines[dialect.skip_rows:]), **dialect.reader_options(self.path))
        records, start = [], dialect.skip_rows
        for fields in reader:
            end = dialect.skip_rows + reader.line_num
            blank_between_records = not fields and records and len(records[0].fields) > 1
            if not blank_between_records:
                records.append(_Record(start, end, fields or [""]))
            start = end
        return records

    def _records_between_comments(self, lines: list[str], dialect: CsvDialect) -> list[_Record]:
        """Records as :meth:`_records`, skipping comment lines where a record would start (a
        comment is not parsed: a quote in it opens nothing)."""
        at = {"next": dialect.skip_rows, "start": -1, "end": -1, "record_start": True, "skip_blank": False}

        def feed():
            while at["next"] < len(lines):
                i = at["next"]
                at["next"] += 1
                if at["record_start"]:
                    content = lines[i].rstrip("\r\n")
                    if content.lstrip(" ").startswith(dialect.comment) or (at["skip_blank"] and not content):
                        continue  # not a record: kept as it is
                    at["start"], at["record_start"] = i, False
                at["end"] = i + 1
                yield lines[i]

        reader = csv.reader(feed(), **dialect.reader_options(self.path))
        records = []
        while True:
            at["record_start"] = True
            try:
                fields = next(reader)
            except StopIteration:
                return records
            records.append(_Record(at["start"], at["end"], fields or [""]))
            at["skip_blank"] = len(records[0].fields) > 1


def _encoding(path: Path, raw: bytes, given: Encoding) -> tuple[Encoding, bytes, str]:
    """How to read ``raw``: the encoding DuckDB is given, the byte-order mark and Python's codec
    for the text after it."""
    if raw.startswith(codecs.BOM_UTF8):
        return Encoding.UTF_8, codecs.BOM_UTF8, "utf-8"
    if raw.startswith(codecs.BOM_UTF16_LE):
        return Encoding.UTF_16, codecs.BOM_UTF16_LE, "utf-16-le"
    if raw.startswith(codecs.BOM_UTF16_BE):
        raise InputError(f"{path}: UTF-16 big-endian text, which DuckDB cannot read. Re-save it as UTF-8.")
    if given is Encoding.UTF_16 and b"\x00" in raw:  # UTF-16 without a mark (UTF-8 text has no NUL)
        return Encoding.UTF_16, b"", "utf-16-le"
    try:
        raw.decode("utf-8")
        return Encoding.UTF_8, b"", "utf-8"
    except UnicodeDecodeError as exc:
        if given is Encoding.UTF_8:
            raise InputError(f"{path}: not UTF-8 (byte 0x{raw[exc.start]:02X} at offset {exc.start}). Pass "
                             "--encoding latin-1 (Windows and older Excel CSV) or --encoding utf-16, as when "
                             "the data was loaded.") from exc
    return given, b"", "latin-1"
