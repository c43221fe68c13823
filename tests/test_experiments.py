"""Experiments as config, assignment, attribution, the read-out and the command line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from scipy import stats
from typer.testing import CliRunner

from experiments.analysis import always_valid, analyze
from experiments.attribution import NoExposuresError, attribute, experiment_exposures, recipients
from experiments.report import print_readout, readout_record, write_report
from experiments.simulate import PlantedEffect, simulate_experiment
from features.tables import Tables
from sendwise.cli import app
from serving.assignment import assign, assign_many, bucket
from serving.experiment_config import Experiment, ExperimentConfigError, Metric, load_experiments

CONFIG = """
experiments:
  - name: subject_test
    start: 2025-03-01
    end: 2025-03-29
    primary_metric: conversion_rate
    guardrail_metrics: [unsubscribe_rate]
    variants:
      - {name: control, weight: 0.5}
      - {name: new_subject, weight: 0.5, subject_line: "We saved your favourites"}
  - name: three_way
    start: 2025-04-01
    end: 2025-04-29
    variants:
      - {name: control, weight: 0.2}
      - {name: b, weight: 0.3}
      - {name: c, weight: 0.5}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "experiments.yaml"
    path.write_text(CONFIG)
    return path


def _experiment(**overrides) -> Experiment:
    base = {"name": "e", "start": "2025-01-01", "end": "2025-02-01",
            "variants": [{"name": "control", "weight": 0.5}, {"name": "b", "weight": 0.5}]}
    return Experiment.model_validate(base | overrides)


# config ----------------------------------------------------------------------------------------
def test_config_loads_and_names_its_defaults(config_file: Path) -> None:
    experiments = load_experiments(config_file)
    e = experiments.get("subject_test")
    assert e.control_variant == "control" and e.treatments == ["new_subject"] and e.hash_salt == "subject_test"
    assert e.attribution_window_days == 7 and e.guardrail_metrics == (Metric.UNSUBSCRIBE_RATE,)
    assert experiments.running(datetime(2025, 4, 2)).name == "three_way"
    assert experiments.running(datetime(2025, 3, 30)) is None


@pytest.mark.parametrize(("text", "message"), [
    ("experiments: [{name: x, start: 2025-01-01, end: 2025-02-01, variants: [{name: a, weight: 0.5}, {name: b, weight: 0.4}]}]",
     "weights sum to 0.9; they must sum to 1"),
    ("experiments: [{name: x, start: 2025-01-01, end: 2025-02-01, variants: [{name: a, weight: 0.5}, {name: a, weight: 0.5}]}]",
     "variant names must be unique"),
    ("experiments: [{name: x, start: 2025-02-01, end: 2025-01-01, variants: [{name: a, weight: 0.5}, {name: b, weight: 0.5}]}]",
     "must be after start"),
    ("experiments: [{name: x, start: 2025-01-01, end: 2025-02-01, control: z, variants: [{name: a, weight: 0.5}, {name: b, weight: 0.5}]}]",
     "control 'z' is not one of the variants"),
    ("experiments: [{name: x, start: 2025-01-01, end: 2025-02-01, variants: [{name: a, weight: 1.0}]}]",
     "variants: Tuple should have at least 2 items"),
    (("experiments:\n - {name: x, start: 2025-01-01, end: 2025-02-01, variants: [{name: a, weight: 0.5}, {name: b, weight: 0.5}]}\n"
      " - {name: y, start: 2025-01-20, end: 2025-03-01, variants: [{name: a, weight: 0.5}, {name: b, weight: 0.5}]}"),
     "experiments 'x' .* and 'y' .* overlap"),
    (("experiments: [{name: x, start: 2025-01-01, end: 2025-02-01, variants: [{name: a, weight: 0.5}, "
      "{name: b, weight: 0.5, policy: missing.yaml}]}]"), "policy file .*missing.yaml does not exist"),
    (("experiments: [{name: x, start: 2025-01-01, end: 2025-02-01, variants: [{name: a, weight: 0.5}, "
      "{name: b, weight: 0.5, model_aliases: {ranker: challenger}}]}]"), "model_aliases"),
    ("experiments: [{name: x", "not valid YAML"),
])
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text(text)
    with pytest.raises(ExperimentConfigError, match=message):
        load_experiments(path)


def test_missing_config_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ExperimentConfigError, match="nope.yaml does not exist"):
        load_experiments(tmp_path / "nope.yaml")


# assignment -----------------------------------------------------------------------------------
def test_assignment_is_pinned_and_stable_across_processes() -> None:
    # SHA-256 of "exp\x1fcustomer-1", first 8 bytes big-endian, over 2^64
    assert bucket("exp", "customer-1") == pytest.approx(0.408799255477733, abs=1e-15)
    e = _experiment(salt="exp")
    ids = [f"customer-{i}" for i in range(200)]
    here = assign_many(e, ids)
    assert here == [assign(e, c) for c in ids] and here[1] == "control" and here[2] == "b"  # buckets 0.41, 0.75
    code = ("import json; from serving.assignment import assign_many; from serving.experiment_config import Experiment;"
            "e = Experiment.model_validate({'name': 'e', 'salt': 'exp', 'start': '2025-01-01', 'end': '2025-02-01',"
            "'variants': [{'name': 'control', 'weight': 0.5}, {'name': 'b', 'weight': 0.5}]});"
            "print(json.dumps(assign_many(e, [f'customer-{i}' for i in range(200)])))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=Path(__file__).resolve().parents[1])
    assert json.loads(other.stdout) == here


def test_assignment_honours_weights_and_is_independent_between_experiments() -> None:
    ids = [f"u{i}" for i in range(60_000)]
    three = _experiment(name="three", variants=[{"name": "control", "weight": 0.2}, {"name": "b", "weight": 0.3},
                                                 {"name": "c", "weight": 0.5}])
    counts = Counter(assign_many(three, ids))
    observed = [counts[v] for v in ("control", "b", "c")]
    assert stats.chisquare(observed, [0.2 * 60_000, 0.3 * 60_000, 0.5 * 60_000]).pvalue > 0.001
    other = assign_many(_experiment(name="other"), ids)
    table = pd.crosstab(pd.Series(assign_many(three, ids)), pd.Series(other))
    assert stats.chi2_contingency(table).pvalue > 0.001  # knowing one assignment tells nothing of the other


# attribution ----------------------------------------------------------------------------------
def test_attribution_counts_only_the_window(tiny_frames: dict) -> None:
    """Customer a exposed Jan 10 (window 7 days): order o2 on Jan 11 counts, o1 on Jan 1 is
    pre-exposure revenue (25); the email open on Jan 26 is outside. b exposed Jan 19: order o3 on
    Jan 20 counts. c was suppressed: not a recipient."""
    e = _experiment(start="2024-01-01", end="2024-02-01")
    log = [
        {"customer_id": "a", "variant": "control", "action": "newsletter", "experiment": "e", "time": "2024-01-10T00:00:00+00:00"},
        {"customer_id": "a", "variant": "control", "action": "newsletter", "experiment": "e", "time": "2024-01-12T00:00:00+00:00"},
        {"customer_id": "b", "variant": "b", "action": "winback", "experiment": "e", "time": "2024-01-19T00:00:00Z"},
        {"customer_id": "c", "variant": "b", "action": "suppress", "experiment": "e", "time": "2024-01-19T00:00:00Z"},
        {"customer_id": "d", "variant": "b", "action": "newsletter", "experiment": "other", "time": "2024-01-19T00:00:00Z"},
        {"customer_id": "x", "variant": "b", "action": "newsletter", "experiment": "e", "time": "2024-03-01T00:00:00Z"},
    ]
    who = recipients(experiment_exposures(log, e), e)
    assert list(who.frame["customer_id"]) == ["a", "b"] and who.suppressed == {"control": 0, "b": 1}
    assert who.frame.loc[0, "exposed_at"] == pd.Timestamp("2024-01-10")
    out = attribute(who.frame, Tables.from_frames(**tiny_frames), 7, 90).set_index("customer_id")
    assert out.loc["a", ["converted", "orders", "revenue", "pre_revenue", "opened"]].tolist() == [True, 1, 10.0, 25.0, False]
    assert out.loc["b", ["converted", "revenue", "pre_revenue"]].tolist() == [True, 15.0, 0.0]


def test_conflicting_and_unknown_variants_are_left_out_with_a_warning() -> None:
    e = _experiment()
    log = [{"customer_id": "a", "variant": "control", "action": "n", "experiment": "e", "time": "2025-01-02T00:00:00Z"},
           {"customer_id": "a", "variant": "b", "action": "n", "experiment": "e", "time": "2025-01-03T00:00:00Z"},
           {"customer_id": "z", "variant": "old", "action": "n", "experiment": "e", "time": "2025-01-03T00:00:00Z"}]
    who = recipients(experiment_exposures(log, e), e)
    assert who.frame.empty and who.conflicting == 1 and who.unknown_variants == {"old": 1}
    with pytest.raises(NoExposuresError, match="has no exposures"):
        recipients(experiment_exposures([], e), e)


def test_forgotten_customers_are_left_out_and_counted() -> None:
    e = _experiment()
    log = [{"customer_id": cid, "variant": "b", "action": "n", "experiment": "e", "time": "2025-01-02T00:00:00Z"}
           for cid in ("a", "forgotten", "forgotten-9f2c4e1a", "forgotten-7d01aa52")]
    who = recipients(experiment_exposures(log, e), e)
    assert list(who.frame["customer_id"]) == ["a"] and who.forgotten == 3


# the read-out ---------------------------------------------------------------------------------
def _pipeline(experiment: Experiment, customers: int, effects: dict, seed: int):
    sim = simulate_experiment(experiment, customers, effects, seed=seed)
    who = recipients(experiment_exposures(sim.exposures, experiment), experiment)
    tables = Tables.from_frames(sim.orders, sim.customers, sim.events)
    outcomes = attribute(who.frame, tables, experiment.attribution_window_days, experiment.pre_period_days)
    return outcomes, who


def test_planted_lift_is_detected_and_aa_is_not(config_file: Path) -> None:
    e = load_experiments(config_file).get("subject_test")
    outcomes, who = _pipeline(e, 40_000, {"new_subject": PlantedEffect(conversion_rate=0.3, open_rate=0.1)}, seed=3)
    readout = analyze(outcomes, e, who)
    conversion = readout.result(Metric.CONVERSION_RATE, "new_subject")
    assert conversion.significant(e.alpha) and conversion.better()
    assert conversion.comparison.relative_ci[0] < 0.3 < conversion.comparison.relative_ci[1]  # covers the truth
    assert readout.result(Metric.OPEN_RATE, "new_subject").significant(e.alpha)
    assert readout.verdict("new_subject") == "wins" and not readout.srm.mismatch
    assert readout.cuped_variance_reduction > 0
    aa, who = _pipeline(e, 40_000, {}, seed=4)
    aa_readout = analyze(aa, e, who)
    assert not aa_readout.srm.mismatch and aa_readout.verdict("new_subject") == "no significant difference"


def test_guardrail_breach_and_holm_with_three_variants(config_file: Path) -> None:
    e = load_experiments(config_file).get("three_way")
    outcomes, who = _pipeline(e, 60_000, {"c": PlantedEffect(unsubscribe_rate=2.0)}, seed=5)
    readout = analyze(outcomes, e, who)
    breached = {(r.metric, r.treatment) for r in readout.guardrail_breaches()}
    assert (Metric.UNSUBSCRIBE_RATE, "c") in breached and (Metric.UNSUBSCRIBE_RATE, "b") not in breached
    assert "guardrail breached: unsubscribe_rate" in readout.verdict("c")
    for metric in Metric:
        rows = [readout.result(metric, t).comparison for t in ("b", "c")]
        low, high = sorted(r.p_value for r in rows)  # Holm with two: 2 x the smaller, then the larger (monotone)
        holm = {low: min(1.0, 2 * low), high: min(1.0, max(2 * low, high))}
        assert [r.adjusted_p_value for r in rows] == pytest.approx([holm[r.p_value] for r in rows])


def test_sample_ratio_mismatch_is_flagged_when_planted(config_file: Path) -> None:
    e = load_experiments(config_file).get("subject_test")
    outcomes, who = _pipeline(e, 20_000, {}, seed=6)
    treated = outcomes.index[outcomes["variant"] == "new_subject"]
    broken = outcomes.drop(treated[: len(treated) // 10])  # lose 10 % of one variant's logs
    readout = analyze(broken, e, who)
    assert readout.srm.mismatch and readout.verdict("new_subject") == "do not trust: sample ratio mismatch"
    assert any("sample ratio mismatch" in w for w in readout.warnings)


def test_empty_variants_are_errors_or_warnings(config_file: Path) -> None:
    e = load_experiments(config_file).get("three_way")
    outcomes, who = _pipeline(e, 3_000, {}, seed=7)
    readout = analyze(outcomes[outcomes["variant"] != "b"], e, who)
    assert any("variant 'b' has 0 recipients" in w for w in readout.warnings) and readout.srm.mismatch
    assert {r.treatment for r in readout.results} == {"c"}
    with pytest.raises(ValueError, match="control variant 'control' has 0 recipients"):
        analyze(outcomes[outcomes["variant"] != "control"], e, who)


def test_a_variant_too_small_to_compare_is_reported_not_crashed(tmp_path: Path) -> None:
    e = _experiment(variants=[{"name": "control", "weight": 0.5}, {"name": "b", "weight": 0.49},
                              {"name": "tiny", "weight": 0.01}], start="2025-03-01", end="2025-03-29")
    outcomes, who = _pipeline(e, 400, {}, seed=11)
    one_tiny = outcomes[outcomes["variant"] == "tiny"].head(1)
    outcomes = pd.concat([outcomes[outcomes["variant"] != "tiny"], one_tiny])
    readout = analyze(outcomes, e, who)
    assert not readout.srm.mismatch  # 1 of ~400 at weight 0.01 is what the weights expect
    assert readout.verdict("tiny") == "not compared: fewer than 2 recipients"
    assert readout_record(readout)["verdicts"]["tiny"] == "not compared: fewer than 2 recipients"
    out = io.StringIO()
    print_readout(readout, Console(file=out, width=250, color_system=None))
    lines = out.getvalue().splitlines()
    split = next(i for i, line in enumerate(lines) if "Against control 'control'" in line)

    def rows(part: list[str]) -> list[list[str]]:
        return [[cell.strip() for cell in line.strip("│").split("│")] for line in part if line.startswith("│")]

    variants = {r[0]: r for r in rows(lines[:split])}
    assert set(variants) == {"control", "b", "tiny"}
    assert [variants[s.variant][1] for s in readout.summaries] == [f"{s.recipients:,}" for s in readout.summaries]
    assert variants["tiny"][1] == "1"
    compared = rows(lines[split:])
    assert [(r[0].removesuffix(" (CUPED)"), r[1]) for r in compared] == [(m.value, "b") for m in Metric]  # not tiny
    assert "b: no significant difference" in lines and "tiny: not compared: fewer than 2 recipients" in lines
    assert any(line.startswith("sample-ratio check:") and line.endswith("(no mismatch)") for line in lines)
    assert any(line.startswith("warning: variant 'tiny' has 1 recipient:") for line in lines)


def test_variants_suppressing_different_shares_are_not_trusted(config_file: Path) -> None:
    e = load_experiments(config_file).get("subject_test")
    outcomes, who = _pipeline(e, 4_000, {}, seed=3)
    balanced = analyze(outcomes, e, replace(who, suppressed={"control": 200, "new_subject": 205}))
    assert balanced.suppression_p_value > 0.05 and not balanced.verdict("new_subject").startswith("do not trust")
    skewed = analyze(outcomes, e, replace(who, suppressed={"control": 200, "new_subject": 600}))
    assert skewed.suppression_p_value < 1e-6
    assert skewed.verdict("new_subject") == "do not trust: variants suppress different shares of their customers"
    assert any("suppress different shares" in w for w in skewed.warnings)
    assert readout_record(skewed)["suppression_balance_p_value"] == skewed.suppression_p_value
    assert analyze(outcomes, e, who).suppression_p_value is None  # nobody suppressed: nothing to compare


def test_sequential_readout_is_wider(config_file: Path) -> None:
    e = load_experiments(config_file).get("subject_test")
    outcomes, who = _pipeline(e, 10_000, {}, seed=8)
    fixed, always = analyze(outcomes, e, who), analyze(outcomes, e, who, use_sequential=True)
    for metric in Metric:
        f, s = fixed.result(metric, "new_subject").comparison, always.result(metric, "new_subject").comparison
        assert s.absolute_ci[1] - s.absolute_ci[0] > f.absolute_ci[1] - f.absolute_ci[0]
        assert s.p_value >= f.p_value and s.absolute_lift == f.absolute_lift


def test_sequential_uses_the_pair_of_variants_as_growthbook_does(config_file: Path) -> None:
    e = load_experiments(config_file).get("three_way")
    outcomes, who = _pipeline(e, 6_000, {}, seed=12)
    fixed, always = analyze(outcomes, e, who), analyze(outcomes, e, who, use_sequential=True)
    counts = outcomes["variant"].value_counts()
    for t in ("b", "c"):
        expected = always_valid(fixed.result(Metric.OPEN_RATE, t).comparison, int(counts["control"] + counts[t]),
                                e.alpha, always.sequential_tuning)
        assert always.result(Metric.OPEN_RATE, t).comparison.absolute_ci == pytest.approx(expected.absolute_ci)


def test_report_html_and_mlflow_run(config_file: Path, tmp_path: Path) -> None:
    e = load_experiments(config_file).get("subject_test")
    outcomes, who = _pipeline(e, 5_000, {"new_subject": PlantedEffect(conversion_rate=0.5)}, seed=9)
    readout = analyze(outcomes, e, who)
    run_id = write_report(readout, outcomes, tmp_path / "r.html", mlruns=tmp_path / "mlruns")
    html = (tmp_path / "r.html").read_text()
    assert "Experiment subject_test" in html and html.count("data:image/png;base64,") == 3
    assert readout.verdict("new_subject") in html
    import mlflow

    run = mlflow.get_run(run_id)
    assert run.data.metrics["control.recipients"] == readout.summaries[0].recipients
    assert "new_subject.conversion_rate.p_value" in run.data.metrics


# command line ---------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_simulate_analyze_assign_power_validate(config_file: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shop = tmp_path / "shop"
    result = runner.invoke(app, ["experiments", "simulate", "subject_test", "--out", str(shop), "--customers", "8000",
                                 "--effect", "new_subject:conversion_rate=0.6", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["experiments", "analyze", "subject_test", "--data", str(shop), "--exposures",
                                 str(shop / "exposures.jsonl"), "--config", str(config_file), "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert "new_subject: wins" in result.output and (tmp_path / "reports" / "subject_test.html").exists()
    (tmp_path / "ids.csv").write_text("customer_id\n" + "\n".join(f"c{i}" for i in range(1000)))
    result = runner.invoke(app, ["experiments", "assign", "three_way", "--customers", str(tmp_path / "ids.csv"),
                                 "--out", str(tmp_path / "a.csv"), "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assigned = pd.read_csv(tmp_path / "a.csv", dtype=str)
    assert len(assigned) == 1000 and set(assigned["variant"]) == {"control", "b", "c"}
    result = runner.invoke(app, ["experiments", "power", "--baseline", "0.1", "--mde", "0.02", "--absolute"])
    assert result.exit_code == 0 and "3,841 recipients per variant" in result.output
    result = runner.invoke(app, ["experiments", "power", "--baseline", "0.1", "--mde", "0.02", "--absolute",
                                 "--recipients", "3841"])
    assert result.exit_code == 0 and "the power is 80.0%" in result.output
    result = runner.invoke(app, ["experiments", "power", "--baseline", "20", "--mde", "1", "--absolute", "--std", "10"])
    assert result.exit_code == 0 and "1,570 recipients per variant" in result.output  # 2 (1.95996 + 0.84162)^2 100
    result = runner.invoke(app, ["experiments", "power", "--baseline", "20", "--mde", "0.05", "--std", "10"])
    assert result.exit_code == 0 and "20 -> 21" in result.output and "1,570 recipients" in result.output
    (tmp_path / "bad.yaml").write_text(CONFIG.replace("weight: 0.3", "weight: 0.4"))
    result = runner.invoke(app, ["experiments", "validate", "--config", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and "weights sum to 1.1" in result.output
    result = runner.invoke(app, ["experiments", "analyze", "three_way", "--data", str(shop), "--exposures",
                                 str(shop / "exposures.jsonl"), "--config", str(config_file), "--no-mlflow"])
    assert result.exit_code == 2 and "has no exposures" in result.output
