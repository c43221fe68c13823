"""Segments: the file checked against the registry when it is loaded (each error names the file, the
segment and the field), rule semantics (and/or/not, a missing value makes a condition false), the
compact string form equal to the YAML form, the batch membership equal to the per-customer one on a
real feature frame, and ``sendwise segments export`` on a project with a real snapshot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from features.errors import InputError, NotFoundError
from features.schema import CUSTOMER_ID
from features.snapshot import read_snapshot, write_snapshot
from features.tables import Tables
from sendwise.cli import app
from sendwise.commands.segments import with_scores
from serving.policy import SCORE_SIGNALS
from serving.segments import SegmentSet, known_signals
from serving.state import SCORE_FIELDS

runner = CliRunner()

# The issue's examples, as far as the registry can say them (docs/segments.md says why the first is
# approximated: no feature counts views by category, and "no order since" becomes "none in the last day").
ISSUE_EXAMPLES = {
    "segments": [
        {"name": "browsed-no-order", "description": "viewed in the last 24 h, no order in that day",
         "when": {"all": [{"signal": "views_1d", "op": ">=", "value": 1},
                          {"any": [{"signal": "recency_days", "op": ">", "value": 1},
                                   {"signal": "orders_count", "op": "==", "value": 0}]}]}},
        {"name": "high-intent", "when": "intent_score >= 30"},
        {"name": "churn-risk-regulars", "when": "churn_probability >= 0.6 and orders_count >= 3"},
    ],
    "triggers": [{"name": "cart-reminder", "after": "add_to_cart", "unless": "order", "within": "1h"}],
}


def write(tmp_path: Path, content: dict | str) -> Path:
    path = tmp_path / "segments.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def test_the_issues_examples_load_and_say_who_is_in() -> None:
    segments = SegmentSet.parse(ISSUE_EXAMPLES)
    assert segments.names == ["browsed-no-order", "high-intent", "churn-risk-regulars"]
    assert segments.signals == ["churn_probability", "intent_score", "orders_count", "recency_days", "views_1d"]
    assert segments.triggers[0].delay.total_seconds() == 3600
    regular = {"views_1d": 2, "recency_days": 3.5, "orders_count": 4, "intent_score": 12.0, "churn_probability": 0.7}
    assert segments.members(regular) == ["browsed-no-order", "churn-risk-regulars"]
    prospect = {"views_1d": 1, "recency_days": None, "orders_count": 0, "intent_score": 30.0,
                "churn_probability": None}  # never ordered: no recency, no churn score
    assert segments.members(prospect) == ["browsed-no-order", "high-intent"]
    just_bought = regular | {"recency_days": 0.2, "churn_probability": 0.59}
    assert segments.members(just_bought) == []


def test_the_docs_example_file_loads() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "segments.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    segments = SegmentSet.parse(yaml.safe_load(example))
    assert segments.names[:3] == [s["name"] for s in ISSUE_EXAMPLES["segments"]]
    assert segments.members({"lifecycle_stage": "at-risk", "churn_risk": "high"}) == ["lapsing-loyals"]
    assert [t.delay.total_seconds() for t in segments.triggers] == [3600, 1800]


def segment_file(when: object) -> dict:
    return {"segments": [{"name": "vip", "when": when}]}


@pytest.mark.parametrize(("content", "expected"), [
    (segment_file({"signal": "orders_cnt", "op": ">=", "value": 3}),
     ["segments.0", "segment 'vip'", "when.signal", "unknown signal 'orders_cnt'", "orders_count, revenue",
      "churn_probability"]),
    (segment_file({"signal": "orders_count", "op": "=>", "value": 3}),
     ["segment 'vip'", "when.op", "unknown op '=>'", "known ops: ==, !=, <, <=, >, >=, in"]),
    (segment_file({"all": [{"signal": "orders_count", "op": ">=", "value": "3"}]}),
     ["segment 'vip'", "when.all.0.value", "orders_count is int", "must be a number; got '3'"]),
    (segment_file({"signal": "unsubscribed", "op": "==", "value": "no"}),
     ["when.value", "unsubscribed is bool", "true or false"]),
    (segment_file({"signal": "unsubscribed", "op": ">", "value": False}), ["op '>' does not apply to unsubscribed"]),
    (segment_file({"not": {"signal": "lifecycle_stage", "op": "in", "value": ["loyal", "gold"]}}),
     ["when.not.value", "lifecycle_stage is one of", "'at-risk'", "got 'gold'"]),
    (segment_file({"signal": "churn_risk", "op": "==", "value": "severe"}), ["'low', 'medium', 'high'"]),
    (segment_file({"signal": "orders_count", "op": "in", "value": 3}), ["needs a non-empty list"]),
    (segment_file({"signal": "orders_count", "op": ">=", "value": 3, "window": "1d"}), ["unexpected keys"]),
    (segment_file({"all": []}), ["when.all: a non-empty list of rules"]),
    (segment_file("orders_count >= 3 and"), ["when: expected a signal name", "found 'the end'"]),
    (segment_file("(orders_count >= 3"), ["expected ')'"]),
    (segment_file("orders_count >= 3 views_1d > 0"), ["expected 'and', 'or' or the end", "found 'views_1d'"]),
    (segment_file("orders_count ~ 3"), ["cannot read '~ 3'"]),
    ({"segments": [{"name": "vip", "when": "orders_count > 1"}, {"name": "vip", "when": "orders_count > 2"}]},
     ["names must be unique", "repeated: vip"]),
    ({"segments": [{"name": "vip", "when": "orders_count > 1"}],
      "triggers": [{"name": "vip", "after": "add_to_cart", "unless": "order", "within": "1h"}]}, ["repeated: vip"]),
    ({"segments": [{"name": "VIP list", "when": "orders_count > 1"}]}, ["segments.0.name", "pattern"]),
    ({"segments": [{"name": "-vip", "when": "orders_count > 1"}]}, ["segments.0.name"]),
    ({"segments": [{"name": "vip", "when": "orders_count > 1", "colour": "red"}]}, ["segments.0.colour", "Extra"]),
    ({"triggers": [{"name": "cart", "after": "add_to_cart", "unless": "order", "within": "1 hour"}]},
     ["triggers.0.within", "trigger 'cart'", "30m, 1h or 2d", "got '1 hour'"]),
    ({"triggers": [{"name": "cart", "after": "add_to_cart", "unless": "order", "within": "0h"}]}, ["got '0h'"]),
    ({"triggers": [{"name": "cart", "after": "add_to_cart", "unless": "order", "within": "91d"}]}, ["at most 90d"]),
    ({"triggers": [{"name": "cart", "after": "cart_add", "unless": "order", "within": "1h"}]},
     ["triggers.0.after", "unknown event type 'cart_add'", "add_to_cart", "order"]),
    ({"triggers": [{"name": "cart", "after": "order", "unless": "order", "within": "1h"}]},
     ["after and unless are both 'order'"]),
    ({"segment": []}, ["segment: Extra inputs"]),
    ("- just a list", ["must hold a mapping"]),
    ("segments: [", ["not valid YAML"]),
])
def test_a_bad_file_fails_at_load_naming_the_file_and_the_place(tmp_path: Path, content: dict | str,
                                                                 expected: list[str]) -> None:
    path = write(tmp_path, content)
    with pytest.raises(InputError) as caught:
        SegmentSet.load(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and all(e in message for e in expected), message


def test_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="segments.yaml does not exist"):
        SegmentSet.load(tmp_path / "segments.yaml")


def test_signals_are_every_output_feature_and_the_scores() -> None:
    signals = known_signals()
    assert {"orders_30d", "views_1d", "cart_abandoned_1d", "intent_score", "top_category", "churn_probability",
            "purchase_probability", "churn_risk", "rfm_segment", "lifecycle_stage"} <= set(signals)
    assert not any(name.startswith("_") for name in signals)
    # what the service scores, a segment may read (but the next order's date: a rule reads expected_orders)
    assert set(SCORE_SIGNALS) | set(SCORE_FIELDS) - {"next_order_date"} <= set(signals)


A, B = {"signal": "orders_count", "op": ">=", "value": 3}, {"signal": "views_1d", "op": ">", "value": 0}


@pytest.mark.parametrize(("when", "values", "member"), [
    ({"all": [A, B]}, {"orders_count": 3, "views_1d": 1}, True),
    ({"all": [A, B]}, {"orders_count": 3, "views_1d": 0}, False),
    ({"any": [A, B]}, {"orders_count": 0, "views_1d": 1}, True),
    ({"any": [A, B]}, {"orders_count": 0, "views_1d": 0}, False),
    ({"not": A}, {"orders_count": 2}, True),
    ({"not": A}, {"orders_count": 3}, False),
    # a missing value makes its condition false, whatever the op; `not` of it is then true
    (A, {"orders_count": None}, False),
    (A, {}, False),
    ({"signal": "recency_days", "op": "!=", "value": 5}, {"recency_days": None}, False),
    ({"signal": "recency_days", "op": "<", "value": 5}, {"recency_days": math.nan}, False),
    ({"not": {"signal": "recency_days", "op": "<", "value": 5}}, {"recency_days": None}, True),
    ({"any": [A, B]}, {"orders_count": None, "views_1d": 2}, True),
    ({"signal": "lifecycle_stage", "op": "in", "value": ["loyal", "at-risk"]}, {"lifecycle_stage": "at-risk"}, True),
    ({"signal": "lifecycle_stage", "op": "in", "value": ["loyal", "at-risk"]}, {"lifecycle_stage": "new"}, False),
    ({"signal": "email_consent", "op": "==", "value": True}, {"email_consent": np.bool_(True)}, True),
    ({"signal": "orders_count", "op": "==", "value": 3}, {"orders_count": np.int64(3)}, True),
])
def test_rules_combine_with_and_or_not_and_missing_values_are_false(when: object, values: dict,
                                                                     member: bool) -> None:
    assert SegmentSet.parse(segment_file(when)).members(values) == (["vip"] if member else [])


@pytest.mark.parametrize(("compact", "rule"), [
    ("churn_probability >= 0.6 and orders_count >= 3",
     {"all": [{"signal": "churn_probability", "op": ">=", "value": 0.6}, A]}),
    ("orders_count >= 3 or views_1d > 0 and not unsubscribed == true",  # and binds tighter than or
     {"any": [A, {"all": [B, {"not": {"signal": "unsubscribed", "op": "==", "value": True}}]}]}),
    ("(orders_count >= 3 or views_1d > 0) and not (unsubscribed == true)",
     {"all": [{"any": [A, B]}, {"not": {"signal": "unsubscribed", "op": "==", "value": True}}]}),
    ("lifecycle_stage in [loyal, 'at-risk'] and churn_risk != \"low\"",
     {"all": [{"signal": "lifecycle_stage", "op": "in", "value": ["loyal", "at-risk"]},
              {"signal": "churn_risk", "op": "!=", "value": "low"}]}),
])
def test_the_compact_form_means_the_same_as_the_yaml_form(compact: str, rule: dict) -> None:
    short, long = SegmentSet.parse(segment_file(compact)), SegmentSet.parse(segment_file(rule))
    rng = np.random.default_rng(0)
    for _ in range(300):
        values = {"churn_probability": rng.choice([None, 0.3, 0.6, 0.9]), "orders_count": rng.choice([None, 0, 3, 5]),
                  "views_1d": rng.choice([None, 0, 1]), "unsubscribed": rng.choice([None, True, False]),
                  "lifecycle_stage": rng.choice([None, "loyal", "at-risk", "new"]),
                  "churn_risk": rng.choice([None, "low", "high"])}
        assert short.members(values) == long.members(values), values


BATCH_RULES = {"segments": [
    *ISSUE_EXAMPLES["segments"],
    {"name": "lapsed-or-at-risk", "when": "lifecycle_stage in [lapsed, at-risk] and not churn_risk == low"},
    {"name": "consented-uk", "when": "email_consent == true and country == 'United Kingdom'"},
    {"name": "rfm-top", "when": "rfm_recency >= 4 or rfm_segment == Champions"},  # a nullable Int32 column
    {"name": "no-buyer", "when": {"not": {"signal": "recency_days", "op": "<", "value": 10_000}}},
    {"name": "cart-left", "when": "cart_abandoned_7d == true or cart_adds_30d > 0"},
]}


@pytest.fixture(scope="module")
def snapshot_frame(demo_tables: Tables, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The demo shop's serving snapshot as written and read back (the export's input), with scores given
    as columns: churn_probability spread over [0, 1], missing for prospects, and its risk band."""
    path = tmp_path_factory.mktemp("snap") / "snapshot.parquet"
    write_snapshot(demo_tables, path)
    features, _ = read_snapshot(path)
    rng = np.random.default_rng(1)
    churn = np.where(features["orders_count"] > 0, rng.random(len(features)), np.nan)
    scores = pd.DataFrame({CUSTOMER_ID: features[CUSTOMER_ID].to_numpy()[::-1], "churn_probability": churn[::-1],
                           "purchase_probability": rng.random(len(features)),
                           "churn_risk": pd.cut(churn[::-1], [0, 0.3, 0.6, 1.0], labels=["low", "medium", "high"],
                                                include_lowest=True).astype(object)})
    return with_scores(features, scores)


def test_the_batch_membership_equals_each_customers_members(snapshot_frame: pd.DataFrame) -> None:
    segments = SegmentSet.parse(BATCH_RULES)
    membership = segments.membership(snapshot_frame)
    assert list(membership.columns) == [CUSTOMER_ID, *segments.names] and len(membership) == len(snapshot_frame)
    rows = snapshot_frame.astype(object).where(snapshot_frame.notna(), None).to_dict("records")
    for row, (_, got) in zip(rows, membership.iterrows(), strict=True):
        assert [n for n in segments.names if got[n]] == sorted(segments.members(row), key=segments.names.index), row
    counts = membership[segments.names].sum()
    assert all(0 < counts[n] < len(membership) for n in segments.names if n != "browsed-no-order"), counts


def test_scores_join_by_customer_not_by_row(snapshot_frame: pd.DataFrame) -> None:
    buyers = snapshot_frame[snapshot_frame["orders_count"] > 0]
    assert buyers["churn_probability"].notna().all()  # the scores were given in reverse order
    assert snapshot_frame.loc[snapshot_frame["orders_count"] == 0, "churn_probability"].isna().all()


# -- the command -------------------------------------------------------------------------------------


@pytest.fixture
def project(demo_dir: Path, demo_tables: Tables, tmp_path: Path) -> Path:
    """A project reading the demo shop, with its serving snapshot (no models: the segments read none)."""
    root = tmp_path / "shop"
    root.mkdir()
    (root / "sendwise.yaml").write_text(f"name: shop\ndata: {demo_dir}\n")
    write_snapshot(demo_tables, root / "state" / "snapshot.parquet")
    rules = {"segments": [s for s in BATCH_RULES["segments"]
                          if not {"churn_probability", "churn_risk"} & set(str(s["when"]).split())]}
    write(root, rules)
    return root


def test_export_writes_membership_and_counts(project: Path) -> None:
    result = runner.invoke(app, ["segments", "export", "--project", str(project)])
    assert result.exit_code == 0, result.output
    written = list((project / "exports").iterdir())
    assert [p.name for p in written] == ["segments-2025-12-31.csv"]  # the snapshot's date; no temporary left
    frame = pd.read_csv(written[0], dtype={CUSTOMER_ID: str})
    segments = SegmentSet.load(project / "segments.yaml")
    features, _ = read_snapshot(project / "state" / "snapshot.parquet")
    assert list(frame.columns) == [CUSTOMER_ID, *segments.names]
    assert frame[CUSTOMER_ID].tolist() == features[CUSTOMER_ID].tolist()
    assert set(np.unique(frame[segments.names])) == {0, 1}
    text = " ".join(result.output.split())
    for name in segments.names:
        assert f"{name} {frame[name].sum():,} " in text, (name, text)
    out = project / "out" / "members.jsonl"
    result = runner.invoke(app, ["segments", "export", "--project", str(project), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == frame.to_dict("records")


@pytest.mark.parametrize(("setup", "args", "expected"), [
    (lambda root: (root / "sendwise.yaml").unlink(), [], "`sendwise init"),
    (lambda root: (root / "segments.yaml").unlink(), [], "segments.yaml does not exist"),
    (lambda root: (root / "state" / "snapshot.parquet").unlink(), [], "`sendwise run --project"),
    (lambda root: (root / "segments.yaml").write_text("segments: []\n"), [], "declares no segments"),
    (lambda root: None, ["--out", "state/snapshot.parquet"], "snapshot.parquet"),
    (lambda root: None, ["--out", "segments.yaml"], "segments.yaml"),
])
def test_export_errors_say_what_fixes_them(project: Path, setup, args: list[str], expected: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    setup(project)
    monkeypatch.chdir(project)
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["segments", "export", *args])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()), result.output
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before  # nothing written


def test_export_loads_the_champions_only_for_a_segment_reading_a_score(project: Path) -> None:
    write(project, {"segments": ISSUE_EXAMPLES["segments"][2:]})  # churn_probability >= 0.6 and ...
    result = runner.invoke(app, ["segments", "export", "--project", str(project)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "no 'shop.churn' model has the alias 'champion'" in text and "Train one first" in text, text
    assert not (project / "exports").exists()


def test_an_id_a_spreadsheet_would_run_is_written_as_text(tmp_path: Path) -> None:
    """Customer ids reach the export from /events too: one starting with = + - @ is prefixed with '."""
    import pandas as pd

    from sendwise.commands.segments import ExportFormat, write_membership

    membership = pd.DataFrame({"customer_id": ['=HYPERLINK("http://x.example","y")', "-2", "17850"], "vip": [1, 0, 1]})
    write_membership(membership, tmp_path / "m.csv", ExportFormat.CSV)
    back = pd.read_csv(tmp_path / "m.csv", dtype=str)
    assert back["customer_id"].tolist() == ['\'=HYPERLINK("http://x.example","y")', "'-2", "17850"]
