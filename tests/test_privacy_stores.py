"""Forget never reports success while data remains (issue 13, items 8 and 11), through the command
line: a store that is named or defaulted but not there stops the command before anything is
written; an id that matched nothing fails it (its tombstone stays, and the message says so); an
export is never written where forget would not find it."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.io import read_tombstones
from sendwise.cli import app

VICTIM = "V-4471"
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def shop(root: Path) -> Path:
    """A data directory of six order lines, two of them VICTIM's."""
    data = root / "data"
    data.mkdir(parents=True)
    (data / "orders.csv").write_text(
        "order_id,customer_id,product_id,quantity,unit_price,ordered_at\n"
        + "".join(f"o{i},{c},p1,1,2.5,2024-01-0{i + 1} 10:00:00\n" for i, c in enumerate(
            ["c1", VICTIM, "c2", "c3", VICTIM, "c1"])))
    return data


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result, " ".join(result.output.split())  # rich wraps long lines


@pytest.mark.parametrize("option", ["--mlruns", "--exposure-log"])
def test_a_misspelled_store_stops_forget_before_anything_is_written(tmp_path: Path, option: str) -> None:
    data = shop(tmp_path)
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").touch()
    (tmp_path / "exposures.jsonl").touch()
    given = {"--mlruns": str(tmp_path / "mlruns"), "--exposure-log": str(tmp_path / "exposures.jsonl")}
    given[option] = str(tmp_path / "no-such-store")
    before = snapshot(tmp_path)
    result, output = invoke("privacy", "forget", VICTIM, "--data", str(data), *[x for kv in given.items() for x in kv])
    assert result.exit_code == 2, output
    assert f"{tmp_path / 'no-such-store'} does not exist" in output
    assert ("--no-mlruns" if option == "--mlruns" else "--no-exposure-log") in output  # how to say there is none
    assert snapshot(tmp_path) == before  # no tombstone, no row removed


def test_default_stores_that_are_not_there_stop_forget_until_pointed_at_or_declared_absent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = shop(tmp_path / "shop")
    monkeypatch.chdir(tmp_path)  # neither ./mlruns nor ./exposures/exposures.jsonl exists here
    before = snapshot(tmp_path)
    result, output = invoke("privacy", "forget", VICTIM, "--data", str(data))
    assert result.exit_code == 2 and "MLflow store mlruns does not exist" in output and "--no-mlruns" in output
    result, output = invoke("privacy", "forget", VICTIM, "--data", str(data), "--no-mlruns")
    assert result.exit_code == 2 and "exposure log exposures/exposures.jsonl does not exist" in output
    assert "--exposure-log FILE" in output and "--no-exposure-log" in output
    (tmp_path / "mlruns").mkdir()  # a folder that is not a store (a typo of the right one, say)
    result, output = invoke("privacy", "forget", VICTIM, "--data", str(data), "--no-exposure-log")
    assert result.exit_code == 2 and "mlruns is not an MLflow store (no mlflow.db in it)" in output
    result, output = invoke("privacy", "forget", VICTIM, "--data", str(data), "--no-exposure-log", "--mlruns",
                            "mlruns", "--no-mlruns")
    assert result.exit_code == 2 and "contradict" in output
    assert snapshot(tmp_path) == before

    result, output = invoke("privacy", "forget", VICTIM, "--data", str(data), "--no-mlruns", "--no-exposure-log")
    assert result.exit_code == 0, output
    assert "Forgot 1 customer(s)" in output and "exposure log: none (--no-exposure-log)" in output
    assert "MLflow store: none (--no-mlruns)" in output and VICTIM not in (data / "orders.csv").read_text()


def test_a_tracking_uri_elsewhere_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = shop(tmp_path)
    for name in ("here", "there"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mlflow.db").touch()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'there' / 'mlflow.db'}")
    result, output = invoke("privacy", "forget", VICTIM, "--data", str(data), "--no-exposure-log",
                            "--mlruns", str(tmp_path / "here"))
    assert result.exit_code == 2 and "MLFLOW_TRACKING_URI points at the store in" in output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    result, output = invoke("privacy", "forget", VICTIM, "--data", str(data), "--no-exposure-log")
    assert result.exit_code == 2 and "search a local MLflow store only" in output
    assert VICTIM in (data / "orders.csv").read_text()


def test_an_id_that_matched_nothing_fails_and_says_its_tombstone_was_kept(tmp_path: Path) -> None:
    data = shop(tmp_path)
    log = tmp_path / "exposures.jsonl"
    log.write_text(json.dumps({"customer_id": "c1"}) + "\n")
    stores = ["--data", str(data), "--no-mlruns", "--exposure-log", str(log)]
    result, output = invoke("privacy", "forget", "V-4417", *stores)  # a typo of the id
    assert result.exit_code == 2, output
    assert "'V-4417' matched no row or record in any store searched" in output
    assert "nothing was removed for them" in output and "tombstone was recorded anyway" in output
    assert "Forgot 0 customer(s)" in output and "V-4417" in read_tombstones(data)

    result, output = invoke("privacy", "forget", VICTIM, "V-4417x", *stores)  # one right, one wrong
    assert result.exit_code == 2 and "'V-4417x' matched no row" in output and f"'{VICTIM}'" not in output
    assert "Forgot 1 customer(s)" in output and VICTIM not in (data / "orders.csv").read_text()

    result, output = invoke("privacy", "forget", VICTIM, *stores)  # again: nothing left, and that is fine
    assert result.exit_code == 0, output
    assert f"Already forgotten, nothing of theirs was left: {VICTIM}" in output


def test_export_refuses_to_write_where_forget_would_not_find_it(tmp_path: Path) -> None:
    data = shop(tmp_path)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    stores = ["--data", str(data), "--no-mlruns", "--no-exposure-log", "--file", str(outputs)]
    for out in (data / "export-V.json", data / "_privacy" / "export.json", outputs / "export.json",
                tmp_path / "link-to-data" / "export.json"):
        if out.parent.name == "link-to-data":
            out.parent.symlink_to(data)
        result, output = invoke("privacy", "export", VICTIM, *stores, "--out", str(out))
        assert result.exit_code == 2 and "is inside" in output and "would not remove it from there" in output, output
        assert not out.exists()

    out = tmp_path / "exports" / "export-V.json"
    result, output = invoke("privacy", "export", VICTIM, *stores, "--out", str(out))
    assert result.exit_code == 0, output
    assert len(json.loads(out.read_text())["input_rows"][str(data / "orders.csv")]) == 2
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # personal data: readable by its owner only
    result, output = invoke("privacy", "forget", VICTIM, "--data", str(data), "--no-mlruns", "--no-exposure-log")
    assert result.exit_code == 0 and not [p for p in data.rglob("*") if p.is_file() and VICTIM in p.read_text()]


def test_the_readme_export_example_writes_outside_the_data_folders() -> None:
    """The example's --out is neither in --data nor beside it or a --file (where the shop's data and
    its snapshot live): nothing a later forget is pointed at holds the export."""
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"^sendwise privacy export .*$", readme, flags=re.MULTILINE)
    assert examples
    for line in examples:
        out = Path(os.path.normpath(re.search(r"--out (\S+)", line)[1]))
        for store in re.findall(r"--(?:data|file) (\S+)", line):
            folder = Path(os.path.normpath(store)).parent
            assert folder == Path(".") or folder not in out.parents, (line, folder)


def test_the_services_state_folder_is_searched_and_a_misspelled_one_refused(tmp_path: Path) -> None:
    """`sendwise serve` writes the data's rejected rows to state/ next to its exposure log (or
    --state-dir): forget and export search it too."""
    data = shop(tmp_path)
    log = tmp_path / "exposures" / "exposures.jsonl"
    (tmp_path / "exposures" / "state" / "rejects").mkdir(parents=True)
    log.write_text("")
    rejects = tmp_path / "exposures" / "state" / "rejects" / "orders.csv"
    rejects.write_text(f"source_row,reason,order_id,customer_id\n7,zero quantity,o9,{VICTIM}\n8,zero quantity,o8,c1\n")
    stores = ["--data", str(data), "--no-mlruns", "--exposure-log", str(log)]
    result, output = invoke("privacy", "forget", VICTIM, *stores, "--state-dir", str(tmp_path / "stat"))
    assert result.exit_code == 2 and f"state folder {tmp_path / 'stat'} does not exist" in output
    assert VICTIM in rejects.read_text()

    result, output = invoke("privacy", "export", VICTIM, *stores)
    assert json.loads(result.output)["input_rows"][str(rejects)][0]["order_id"] == "o9"
    result, output = invoke("privacy", "forget", VICTIM, *stores)
    assert result.exit_code == 0, output
    assert rejects.read_text() == "source_row,reason,order_id,customer_id\n8,zero quantity,o8,c1\n"


def test_a_file_forget_cannot_read_fails_it_after_the_others_are_cleaned(tmp_path: Path) -> None:
    data = shop(tmp_path)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "a_broken.csv").write_text(f"customer_id,score\n{VICTIM},0.5,extra,fields\n\"unclosed\n")
    (outputs / "b_scores.csv").write_text(f"customer_id,score\n{VICTIM},0.5\nc1,0.2\n")
    result, output = invoke("privacy", "forget", VICTIM, "--data", str(data), "--no-mlruns", "--no-exposure-log",
                            "--file", str(outputs))
    assert result.exit_code == 2 and f"not searched: {outputs / 'a_broken.csv'}" in output, output
    assert "1 file(s) could not be searched" in output and "rows there, if any, remain" in output
    assert (outputs / "b_scores.csv").read_text() == "customer_id,score\nc1,0.2\n"  # the others were done
    assert VICTIM not in (data / "orders.csv").read_text() and VICTIM in read_tombstones(data)
