"""Forget edits a CSV table as the loader reads it (issue 13, items 9 and 10): whatever the delimiter,
quoting, encoding, byte-order mark, line endings or repeated header names, the customer's records
go and every other byte of the file stays; a symlinked table, log or folder has the file it points
to rewritten, with its permissions.

Each file is written here from a list of records in one dialect; the expected file after forget is
the same list without the customer's records, written in the same dialect, so the assertion is
byte for byte."""

from __future__ import annotations

import gzip
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from features.errors import InputError
from features.io import load_data_dir
from features.privacy import customer_rows, drop_customer_rows
from sendwise.privacy.forget import forget_customers
from serving.exposures import read_exposures

VICTIM = "V-4471"
HEADER = ["order_id", "customer_id", "product_id", "quantity", "unit_price", "ordered_at", "note"]


def orders(notes: list[str], victim_last: bool = False) -> list[list[str]]:
    """Ten order lines of three customers; the victim has lines 2, 5 and 9 (one with spaces around
    the id: ids are compared trimmed, as the loader reads them), and the last one with ``victim_last``."""
    who = ["c1", VICTIM, "c2", "c3", f" {VICTIM} ", "c1", "c2", "c3", VICTIM, VICTIM if victim_last else "c1"]
    return [[f"o{i}", c, f"p{i % 3}", str(1 + i % 2), f"{2 + i}.50", f"2024-01-{10 + i} 08:00:00", notes[i % len(notes)]]
            for i, c in enumerate(who)]


@dataclass
class Dialect:
    delimiter: str = ","
    quote: str = '"'
    newline: str = "\n"
    bom: bool = False
    escape: str = ""  # "" doubles a quote inside a quoted field
    always_quote: bool = False
    header: list[str] | None = None
    trailing_newline: bool = True
    encoding: str = "utf-8"  # the loader's --encoding: utf-8, latin-1 or utf-16 (little-endian)

    def field(self, value: str) -> str:
        special = self.delimiter in value or "\n" in value or "\r" in value or (self.quote and self.quote in value)
        if not self.quote or not (special or self.always_quote):
            return value
        inner = value.replace(self.quote, (self.escape or self.quote) + self.quote)
        return f"{self.quote}{inner}{self.quote}"

    def render(self, rows: list[list[str]]) -> bytes:
        lines = [self.delimiter.join(self.header or HEADER)] + [self.delimiter.join(map(self.field, r)) for r in rows]
        text = self.newline.join(lines) + (self.newline if self.trailing_newline else "")
        codec = "utf-16-le" if self.encoding == "utf-16" else self.encoding
        return (("\ufeff" if self.bom else "") + text).encode(codec)


CASES = {
    "comma, LF": (Dialect(), ["plain", "with, comma", 'say "hi"']),
    "semicolon, CRLF, UTF-8 BOM, multi-line fields": (
        Dialect(delimiter=";", newline="\r\n", bom=True), ["a;b", "two\r\nlines", "Müller ñ 日本", "x"]),
    "tab": (Dialect(delimiter="\t"), ["commas, here, too", "semi;colon", "plain"]),
    "pipe, single quotes": (Dialect(delimiter="|", quote="'"), ["a|b", "plain", "it's"]),
    "backslash escape": (Dialect(escape="\\"), ['say "hi"', "plain, comma", "x"]),
    "every field quoted, CRLF": (Dialect(newline="\r\n", always_quote=True), ["plain", "x"]),
    "repeated header": (Dialect(header=HEADER[:-1] + ["customer_id"]), ["k1", "k2"]),
    "no newline at the end": (Dialect(trailing_newline=False), ["plain", "x"]),
    "Latin-1": (Dialect(delimiter=";", newline="\r\n", encoding="latin-1"), ["Müller", "café; crème", "x"]),
    "UTF-16 with a byte-order mark": (Dialect(delimiter="\t", bom=True, encoding="utf-16"), ["Müller 日本", "x"]),
}


@pytest.mark.parametrize("gz", [False, True], ids=["csv", "csv.gz"])
@pytest.mark.parametrize("case", list(CASES))
def test_forget_removes_exactly_the_customers_records_in_the_files_own_dialect(tmp_path: Path, case: str,
                                                                               gz: bool) -> None:
    dialect, notes = CASES[case]
    rows = orders(notes, victim_last=not dialect.trailing_newline)  # the file must still end without one
    if dialect.header:  # the repeated column holds another value; the loader names it customer_id_1
        rows = [r[:-1] + [f"other-{i}"] for i, r in enumerate(rows)]
    victims = [r for r in rows if r[1].strip() == VICTIM]
    kept = [r for r in rows if r[1].strip() != VICTIM]
    data = tmp_path / "data"
    data.mkdir()
    path = data / ("orders.csv.gz" if gz else "orders.csv")
    path.write_bytes(gzip.compress(dialect.render(rows)) if gz else dialect.render(rows))

    assert list(customer_rows(path, [VICTIM], dialect.encoding)["order_id"]) == [r[0] for r in victims]  # export
    report = forget_customers([VICTIM], data, encoding=dialect.encoding)

    after = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    assert after == dialect.render(kept)  # every other byte as it was: BOM, quoting, line endings, header
    tables, validation = load_data_dir(data, tmp_path / "rejects", dialect.encoding)
    loaded = tables.con.sql("SELECT order_id, customer_id FROM orders ORDER BY order_id").fetchall()
    assert loaded == sorted((r[0], r[1]) for r in kept) and validation.rejected == 0
    if dialect.header:
        assert "customer_id_1" in tables.con.table("orders").columns  # the repeated name, read as the loader does
    assert report.file_rows == {str(path): len(victims)} and report.found[VICTIM] == len(victims)


def test_a_latin1_shop_and_its_utf8_rejects_both_lose_a_customer_with_an_accented_id(tmp_path: Path) -> None:
    """The tables are read in --encoding latin-1 as the loader reads them; the rejects file, written by
    sendwise, is UTF-8: each file is read in its own encoding, so the id matches in both."""
    who = "Müller-7"
    data = tmp_path / "data"
    (data / "_rejects").mkdir(parents=True)
    rows = [[f"o{i}", c, "p1", "1", "2.50", f"2024-01-1{i} 08:00:00", "x"] for i, c in enumerate(["c1", who, "c2"])]
    table = Dialect(delimiter=";", encoding="latin-1")
    (data / "orders.csv").write_bytes(table.render(rows))
    rejects = Dialect(header=["source_row", "reason", *HEADER])
    (data / "_rejects" / "orders.csv").write_bytes(rejects.render([["4", "zero quantity", *rows[1]]]))

    report = forget_customers([who], data, encoding="latin-1")

    assert report.found == {who: 2} and report.unmatched == []
    assert (data / "orders.csv").read_bytes() == table.render([rows[0], rows[2]])
    assert (data / "_rejects" / "orders.csv").read_bytes() == rejects.render([])


def test_a_file_the_two_parsers_read_differently_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    lines = [",".join(r) + (" # returned" if i == 4 else "") for i, r in enumerate(orders(["x"]))]
    # DuckDB's sniffer finds '#' comments: it skips the comment lines and cuts the victim's line at
    # '#'; Python's csv module keeps " # returned" in the note. Forget cannot tell which bytes to cut.
    path.write_text("\n".join(["# exported by the shop", "# 2024-01", ",".join(HEADER), *lines[:3], "# page 2",
                               *lines[3:]]) + "\n")
    before = path.read_bytes()
    with pytest.raises(InputError, match="read this file differently.*it was not changed"):
        drop_customer_rows(path, [VICTIM])
    assert path.read_bytes() == before
    lines[4] = lines[4].removesuffix(" # returned")  # whole-line comments alone are read alike
    path.write_text("\n".join(["# exported by the shop", ",".join(HEADER), *lines[:3], "# page 2", *lines[3:]]) + "\n")
    assert drop_customer_rows(path, [VICTIM]) == {VICTIM: 3}
    assert path.read_text() == "\n".join(["# exported by the shop", ",".join(HEADER), lines[0], lines[2], "# page 2",
                                          lines[3], *lines[5:8], lines[9]]) + "\n"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_symlinked_tables_logs_and_folders_have_their_targets_rewritten_with_their_permissions(
        tmp_path: Path) -> None:
    shared, data, outputs = tmp_path / "shared", tmp_path / "data", tmp_path / "outputs"
    for folder in (shared, data, outputs, shared / "scores"):
        folder.mkdir()
    rows = orders(["x"])
    real_orders = shared / "orders.csv"
    real_orders.write_bytes(Dialect(delimiter=";").render(rows))
    real_orders.chmod(0o640)  # neither mkstemp's 0600 nor the umask's 0644
    (data / "orders.csv").symlink_to(real_orders)
    real_customers = shared / "customers.parquet"
    pd.DataFrame({"customer_id": ["c1", VICTIM, "c2"]}).to_parquet(real_customers)
    real_customers.chmod(0o644)
    (data / "customers.parquet").symlink_to(real_customers)
    pd.DataFrame({"customer_id": [VICTIM, "c3"], "score": [0.1, 0.2]}).to_parquet(shared / "scores" / "s.parquet")
    (outputs / "scores").symlink_to(shared / "scores")  # a --file folder holding a symlinked folder
    real_log = shared / "exposures.jsonl"
    real_log.write_text("".join(json.dumps({"customer_id": c, "i": i}) + "\n" for i, c in enumerate(["c1", VICTIM])))
    real_log.chmod(0o644)
    log = tmp_path / "exposures.jsonl"
    log.symlink_to(real_log)

    report = forget_customers([VICTIM], data, exposure_log=log, files=[outputs])

    assert (data / "orders.csv").is_symlink() and (data / "orders.csv").resolve() == real_orders
    assert real_orders.read_bytes() == Dialect(delimiter=";").render([r for r in rows if r[1].strip() != VICTIM])
    assert (data / "customers.parquet").is_symlink() and list(pd.read_parquet(real_customers)["customer_id"]) == [
        "c1", "c2"]
    assert list(pd.read_parquet(shared / "scores" / "s.parquet")["customer_id"]) == ["c3"]
    first, second = (r["customer_id"] for r in read_exposures(real_log))
    assert log.is_symlink() and first == "c1" and second.startswith("forgotten-")
    assert (_mode(real_orders), _mode(real_customers), _mode(real_log)) == (0o640, 0o644, 0o644)
    assert report.found[VICTIM] == 3 + 1 + 1 + 1 and not list(shared.glob(".*.tmp"))
    assert os.readlink(data / "orders.csv") == str(real_orders)
