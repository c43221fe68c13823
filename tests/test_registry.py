"""The feature registry: one declaration per feature drives the SQL, the model inputs, the policy
signals, the reasons and the README."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import build_features, feature_sql
from features.config import FeatureConfig, IntentWeights
from features.engines import Engine
from features.engines.compiler import compile_features
from features.registry import Dtype, Unit, describe, markdown_table, registry
from features.tables import Tables
from training.design import feature_columns

README = Path(__file__).resolve().parents[1] / "README.md"
OTHER = FeatureConfig(order_windows_days=(14, 60), email_windows_days=(10,), browse_windows_days=(2,),
                      abandoned_cart_days=(3,), intent_window_days=10,
                      intent_weights=IntentWeights(view=1, add_to_cart=2, purchase=4))
CONFIGS = [FeatureConfig(), OTHER]


def test_the_built_columns_and_types_are_the_declared_ones(tiny_tables: Tables) -> None:
    for config in CONFIGS:
        reg = registry(config)
        built = build_features(tiny_tables, "2024-02-01", config)
        assert list(built.columns) == reg.columns
        kinds = {Dtype.INT: pd.api.types.is_integer_dtype, Dtype.FLOAT: pd.api.types.is_float_dtype,
                 Dtype.BOOL: pd.api.types.is_bool_dtype,
                 Dtype.TEXT: lambda s: pd.api.types.is_string_dtype(s) or s.dtype == object}
        for name in reg.outputs:
            assert kinds[reg.by_name[name].dtype](built[name]), (name, built[name].dtype)


def test_model_inputs_come_from_the_registry() -> None:
    """Numeric and flag features in output order, then the one-hot levels; free text never."""
    default = feature_columns(config=FeatureConfig())
    assert default[:4] == ["email_consent", "tenure_days", "recency_days", "days_since_first_order"]
    assert "country" not in default and "top_category" not in default and "rfm_segment" not in default
    assert default[-6:] == [f"lifecycle_stage={s}" for s in ("prospect", "new", "active", "loyal", "at-risk", "lapsed")]
    assert not any(c.startswith("_") for c in default)
    other = feature_columns(config=OTHER)
    assert {"orders_14d", "revenue_60d", "emails_sent_10d", "views_2d", "cart_abandoned_3d"} <= set(other)
    assert not {"orders_30d", "emails_sent_7d", "views_1d", "cart_abandoned_1d"} & set(other)


def test_a_frame_built_with_other_settings_is_refused(tiny_tables: Tables) -> None:
    built = build_features(tiny_tables, "2024-02-01", OTHER)
    with pytest.raises(ValueError, match="lack the model inputs orders_30d"):
        feature_columns(built, FeatureConfig())


def test_signals_follow_the_windows() -> None:
    assert {"emails_sent_7d", "cart_abandoned_1d", "views_1d", "email_consent", "unsubscribed", "country",
            "recency_days", "orders_count", "rfm_segment", "lifecycle_stage"} <= set(registry(FeatureConfig()).signals())
    other = registry(OTHER).signals()
    assert {"emails_sent_10d", "cart_abandoned_3d", "views_2d"} <= set(other) and "emails_sent_7d" not in other


# -- reasons in words -------------------------------------------------------------------------------
SAMPLES = (0.0, 1.0, 2.0, 2.5, 0.3, 142.0, -3.0, 0.25, np.nan)
BANNED = re.compile(r"\b(ipi|std|avg|rfm|nan|none|null|inf)\b|_", re.IGNORECASE)


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "other"])
def test_every_model_input_has_a_phrase_a_marketer_can_read(config: FeatureConfig) -> None:
    """No underscores or abbreviations, never the bare feature name ("no overdue days", "not lifecycle
    stage loyal"), and the value stated."""
    reg = registry(config)
    for column in feature_columns(config=config):
        name = column.split("=", 1)[0]
        feature = reg.by_name[name]
        bare = name.replace("_", " ")
        for value in SAMPLES:
            if feature.unit in (Unit.FLAG, Unit.LEVEL) and not math.isnan(value) and value not in (0.0, 1.0):
                continue
            if feature.dtype is Dtype.INT and not math.isnan(value) and value != round(value):
                continue
            if math.isnan(value) and feature.default is not None:
                continue  # never missing
            text = describe(column, value, config)
            assert isinstance(text, str) and text, (column, value)
            assert not BANNED.search(text), (column, value, text)
            assert text.lower() not in (bare, f"no {bare}", f"not {bare}") and not text.lower().startswith(
                (f"no {bare}", f"not {bare}")), (column, value, text)
            numeric = feature.unit not in (Unit.FLAG, Unit.LEVEL, Unit.TEXT)
            if numeric and not math.isnan(value) and round(value, 2) != 0:
                assert re.search(r"\d|less than a day|due now", text), (column, value, text)


def test_a_missing_phrase_is_a_declaration_error() -> None:
    from dataclasses import replace

    from features.registry import Registry, RegistryError, features, sources

    config = FeatureConfig()
    declared = [replace(f, phrase=None) if f.name == "recency_days" else f for f in features(config)]
    with pytest.raises(RegistryError, match="recency_days: a model input needs a phrase"):
        Registry(config, sources(config), tuple(declared))


# -- engines ----------------------------------------------------------------------------------------
DUCKDB_ONLY = re.compile(r"\$|to_days|epoch_us|GROUP BY ALL|FILTER|arg_max|arg_min|bool_or|stddev|median|first\(|::",
                         re.IGNORECASE)


def test_declarations_hold_no_duckdb_only_construct() -> None:
    for config in CONFIGS:
        reg = registry(config)
        texts = [t for f in reg.features for t in (f.of, f.by, f.where, f.expr, f.score_of) if t]
        texts += [t for s in reg.sources for t in (s.where, s.timestamp, *(e for _, e in s.columns)) if t]
        for text in texts:
            assert not DUCKDB_ONLY.search(text), text


class Spelled(Engine):
    """An engine whose every dialect-specific part is a marker: what the SQL holds of DuckDB is then
    only what the declarations hold."""

    name = "spelled"

    def parameter(self, name: str) -> str:
        return f"PARAM({name})"

    def as_of(self) -> str:
        return "AS_OF()"

    def days_between(self, earlier: str, later: str) -> str:
        return f"DAYS({earlier}, {later})"

    def days_before(self, days: int) -> str:
        return f"AS_OF_MINUS({days})"

    def days_after(self, days: int) -> str:
        return f"AS_OF_PLUS({days})"

    def aggregate(self, function: str, argument: str, condition: str | None = None) -> str:
        return f"AGG_{function}({argument}{', ' + condition if condition else ''})"

    def latest(self, value: str, timestamp: str, condition: str | None) -> str:
        return f"LATEST({value}, {timestamp}, {condition})"

    def top(self, value: str, by: str, condition: str | None) -> str:
        return f"TOP({value}, {by}, {condition})"

    def parameters(self, as_of: object) -> dict[str, object]:
        return {}


def test_every_dialect_specific_part_goes_through_the_engine() -> None:
    sql = compile_features(registry(FeatureConfig()), Spelled())
    spelled = re.sub(r"AGG_\w+", "AGG", sql.replace("first_of_product", ""))
    assert not DUCKDB_ONLY.search(spelled), DUCKDB_ONLY.search(spelled)
    assert "AGG_count(*, event_type = 'email_sent' AND occurred_at >= AS_OF_MINUS(7)) AS emails_sent_7d" in sql
    assert "LATEST(value, changed_at, attribute = 'country') AS country" in sql
    duckdb_sql = feature_sql(FeatureConfig())
    assert "count(*) FILTER (WHERE event_type = 'email_sent' AND occurred_at >= $as_of - to_days(7))" in duckdb_sql


# -- settings in one file that the commands read ----------------------------------------------------
def test_settings_load_from_a_yaml_file_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "features.yaml"
    path.write_text("order_windows_days: [14, 60]\nintent_weights: {view: 1, add_to_cart: 2, purchase: 4}\n")
    config = FeatureConfig.load(path)
    assert config.order_windows_days == (14, 60) and config.intent_weights.view == 1
    assert FeatureConfig.from_dict(config.to_dict()) == config
    monkeypatch.setenv("SENDWISE_FEATURE_CONFIG", str(path))
    assert FeatureConfig.current() == config
    assert "orders_14d" in registry().outputs
    path.write_text("order_windows_days: [30, 30]\n")
    with pytest.raises(ValueError, match="must not repeat a window"):
        FeatureConfig.load(path)
    path.write_text("order_windows: [7]\n")
    with pytest.raises(ValueError, match="order_windows: Extra inputs are not permitted"):
        FeatureConfig.load(path)
    with pytest.raises(LookupError, match="does not exist"):
        FeatureConfig.load(tmp_path / "missing.yaml")


def test_the_features_command_reads_the_settings_file(tiny_frames: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sendwise.cli import app

    data = tmp_path / "data"
    data.mkdir()
    for name, frame in tiny_frames.items():
        frame.to_parquet(data / f"{name}.parquet")
    settings = tmp_path / "features.yaml"
    settings.write_text("order_windows_days: [14]\nemail_windows_days: [10]\n")
    out = tmp_path / "f.parquet"
    result = CliRunner().invoke(app, ["features", "build", "--data", str(data), "--as-of", "2024-02-01",
                                      "--out", str(out), "--feature-config", str(settings)])
    assert result.exit_code == 0, result.output
    columns = set(pd.read_parquet(out).columns)
    assert {"orders_14d", "emails_sent_10d", "open_rate_10d"} <= columns and "orders_30d" not in columns


# -- the README --------------------------------------------------------------------------------------
BEGIN, END = "<!-- feature table: generated by `python -m features.registry` -->", "<!-- end of feature table -->"


def test_the_readme_feature_table_is_the_registry() -> None:
    """Regenerate with `python -m features.registry --readme` after changing a declaration."""
    text = README.read_text()
    assert BEGIN in text and END in text, "the README's feature table markers are missing"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == markdown_table(FeatureConfig()), "README feature table differs: run python -m features.registry --readme"
