"""Files that are not what their name says get a one-line message naming the file and what is
expected (exit 2), never a traceback or DuckDB's advice: other encodings, spreadsheets, archives,
mislabelled compression, binary data, broken CSV lines; for the loader and the importers alike."""

from __future__ import annotations

import gzip
import io
import random
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.importers.movielens import import_movielens
from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir
from features.validate import ContractError
from sendwise.cli import app

runner = CliRunner()
HEADER = "order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"
UCI_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def xlsx_bytes() -> bytes:
    """The first bytes and the parts of a real .xlsx: a zip with xl/workbook.xml."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
        z.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")
    return buffer.getvalue()


def invoke(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a message, not a crash
    for leak in ("Traceback", "Possible Solution", "Possible fixes", "DuckDB", "sniff"):
        assert leak not in result.output, result.output
    return " ".join(result.output.split())  # rich wraps long lines


LATIN1 = (HEADER + "1,c1,Caf\xe9 cr\xe8me,1,2.5,2024-01-01\n").encode("latin-1")
CASES = {
    # name: (file name, bytes, words the message must hold)
    "latin-1": ("orders.csv", LATIN1, ["not UTF-8", "line 2", "--encoding latin-1"]),
    "xlsx": ("orders.csv", xlsx_bytes(), ["an Excel workbook", "export it as CSV"]),
    "xls": ("orders.csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600, ["Excel", "export it as CSV"]),
    "zip": ("orders.csv", b"PK\x03\x04" + b"\0" * 40, ["zip archive"]),
    "gzip named .csv": ("orders.csv", gzip.compress(HEADER.encode()), ["gzip", "orders.csv.gz"]),
    "text named .csv.gz": ("orders.csv.gz", HEADER.encode(), ["not gzip", "orders.csv"]),
    "broken gzip": ("orders.csv.gz", gzip.compress((HEADER * 50).encode())[:40], ["gzip", "damaged"]),
    "csv named .parquet": ("orders.parquet", HEADER.encode(), ["not a Parquet file", "CSV"]),
    "truncated parquet": ("orders.parquet", b"PAR1" + b"\0" * 100, ["Parquet", "damaged"]),
    "utf-16": ("orders.csv", (HEADER + "1,c,p,1,1,2024-01-01\n").encode("utf-16"), ["UTF-16", "--encoding utf-16"]),
    "binary junk": ("orders.csv", random.Random(0).randbytes(5000), ["binary", "not CSV"]),
    "pdf": ("orders.csv", b"%PDF-1.7\n" + b"x" * 100, ["a PDF document"]),
    "empty": ("orders.csv", b"", ["empty"]),
}


@pytest.mark.parametrize("case", CASES)
def test_validate_says_what_the_file_is(tmp_path: Path, case: str) -> None:
    name, content, words = CASES[case]
    (tmp_path / name).write_bytes(content)
    out = invoke("data", "validate", tmp_path)
    assert str(tmp_path / name) in out
    for word in words:
        assert word in out


def test_a_bad_byte_far_into_the_file_is_found_too(tmp_path: Path) -> None:
    rows = "".join(f"{i},c{i % 7},p1,1,2.5,2024-01-01\n" for i in range(30_000))
    (tmp_path / "orders.csv").write_bytes((HEADER + rows).encode() + b"30000,c1,Caf\xe9,1,2.5,2024-01-01\n")
    out = invoke("data", "validate", tmp_path)
    assert "orders.csv: not UTF-8" in out and "line 30002" in out


def test_a_line_with_too_many_fields_names_the_line(tmp_path: Path) -> None:
    rows = "".join(f"{i},c1,p1,1,2.5,2024-01-01\n" for i in range(30_000))
    (tmp_path / "orders.csv").write_text(HEADER + rows + "x,c1,p1,1,2.5,2024-01-01,extra\n")
    out = invoke("data", "validate", tmp_path)
    assert "line 30002" in out and "7 fields" in out and "6" in out


def test_encoding_option_reads_latin_1(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_bytes(LATIN1)
    result = runner.invoke(app, ["data", "validate", str(tmp_path), "--encoding", "latin-1"])
    assert result.exit_code == 0, result.output
    tables, _ = load_data_dir(tmp_path, encoding="latin-1")
    assert tables.frame("orders")["product_id"].item() == "Café crème"
    out = tmp_path / "f.parquet"
    result = runner.invoke(app, ["features", "build", "--data", str(tmp_path), "--as-of", "2024-02-01",
                                 "--out", str(out), "--encoding", "latin-1"])
    assert result.exit_code == 0, result.output


def test_gzip_compressed_latin_1(tmp_path: Path) -> None:
    (tmp_path / "orders.csv.gz").write_bytes(gzip.compress(LATIN1))
    assert "orders.csv.gz: not UTF-8 (byte 0xE9 on line 2)" in invoke("data", "validate", tmp_path)
    tables, _ = load_data_dir(tmp_path, encoding="latin-1")
    assert tables.frame("orders")["product_id"].item() == "Café crème"


def test_the_loader_raises_contract_errors(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_bytes(xlsx_bytes())
    with pytest.raises(ContractError, match=r"orders.csv: an Excel workbook"):
        load_data_dir(tmp_path)


@pytest.mark.parametrize(("importer", "command", "header"), [
    (import_online_retail, "online-retail", UCI_HEADER),
    (import_movielens, "movielens", "userId,movieId,rating,timestamp\n"),
])
def test_importers_say_what_the_file_is(tmp_path: Path, importer, command: str, header: str) -> None:
    src = tmp_path / "Online Retail.xlsx"
    src.write_bytes(xlsx_bytes())
    with pytest.raises(ContractError, match="an Excel workbook"):
        importer(src, tmp_path / "out")
    out = invoke("data", "import", command, src, "--out", tmp_path / "out")
    assert "Online Retail.xlsx: an Excel workbook" in out
    latin = tmp_path / "latin.csv"
    row = ("536365,85123A,CR\xc8ME,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n" if command == "online-retail"
           else "1,10,4.5,964982703\n2,Caf\xe9,4.0,964982704\n")
    latin.write_bytes((header + row).encode("latin-1"))
    out = invoke("data", "import", command, latin, "--out", tmp_path / "out")
    assert "latin.csv: not UTF-8" in out
    assert not (tmp_path / "out").exists()


def test_import_with_encoding(tmp_path: Path) -> None:
    src = tmp_path / "uci.csv"
    src.write_bytes((UCI_HEADER + "536365,85123A,CR\xc8ME,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n")
                    .encode("latin-1"))
    result = runner.invoke(app, ["data", "import", "online-retail", str(src), "--out", str(tmp_path / "o"),
                                 "--encoding", "latin-1"])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(tmp_path / "o" / "products.parquet")["name"].item() == "CRÈME"


@pytest.mark.parametrize("bad_line", ["2,c1,p1,1,2.5,2024-01-01,extra", "2,c1,p1,1,2.5"])
@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_line_with_other_fields_near_the_top_names_the_line(tmp_path: Path, bad_line: str, where: str) -> None:
    # DuckDB's sniffer reads such a file as one column, or takes the odd line for the header
    lines = ["1,c1,p1,1,2.5,2024-01-01", bad_line] + (["3,c1,p1,1,2.5,2024-01-01"] if where == "middle" else [])
    (tmp_path / "orders.csv").write_text(HEADER + "\n".join(lines) + "\n")
    out = invoke("data", "validate", tmp_path)
    assert f"orders.csv: line 3 has {bad_line.count(',') + 1} fields where the header has 6" in out


def test_a_title_line_above_the_header_is_still_read(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text("Orders exported 2024-02-01\n" + HEADER + "1,c1,p1,1,2.5,2024-01-01\n")
    tables, report = load_data_dir(tmp_path)
    assert tables.count("orders") == 1 and report.rejected == 0


def test_utf_16_without_a_byte_order_mark_is_read_with_the_option(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_bytes((HEADER + "1,c1,Café,1,2.5,2024-01-01\n").encode("utf-16-le"))
    tables, _ = load_data_dir(tmp_path, encoding="utf-16")
    assert tables.frame("orders")["product_id"].item() == "Café"
