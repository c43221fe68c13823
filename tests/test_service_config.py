"""The service's settings from the environment (``SENDWISE_*``, pydantic-settings): every
variable, the defaults, and the errors a user can fix, each naming its variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from features.errors import InputError
from serving.clock import ClockMode
from serving.config import ServeConfig
from serving.consent import ConsentRule
from serving.product_block import BlockSettings

KEY = "sk-config-test-9f8e7d"
EVERY = {"SENDWISE_DATA": "/srv/shop", "SENDWISE_SNAPSHOT": "/srv/snap.parquet", "SENDWISE_MLRUNS": "/srv/mlruns",
         "SENDWISE_CHURN_ALIAS": "c1", "SENDWISE_PROPENSITY_ALIAS": "p1", "SENDWISE_RECOMMENDER_ALIAS": "r1",
         "SENDWISE_EXPOSURE_LOG": "/var/log/sendwise/exposures.jsonl", "SENDWISE_STATE_DIR": "/var/lib/sendwise",
         "SENDWISE_EXPOSURE_FSYNC": "true", "SENDWISE_API_KEY": KEY, "SENDWISE_POLICY": "/srv/policy.yaml",
         "SENDWISE_CURRENCY": "EUR", "SENDWISE_EXPERIMENTS": "/srv/experiments.yaml",
         "SENDWISE_CONSENT": "unless-refused", "SENDWISE_PROJECT": "shop-a", "SENDWISE_ALLOW_FOREIGN_MODELS": "true",
         "SENDWISE_TIMEZONE": "asia/tokyo", "SENDWISE_PRODUCT_URL": "https://shop.example/products/{product_id}?ref=mail",
         "SENDWISE_UTM_SOURCE": "newsletter", "SENDWISE_UTM_MEDIUM": "e-mail_v2", "SENDWISE_CLOCK": "data",
         "SENDWISE_EVENT_LOG": "/var/lib/sendwise/events.jsonl", "SENDWISE_SEGMENTS": "/srv/segments.yaml",
         "SENDWISE_WEBHOOK_URL": "https://crm.example/hooks/sendwise", "SENDWISE_WEBHOOK_SECRET": "whsec-5c1e",
         "SENDWISE_ONLINE_STORE": "redis://:r3dis-pw@cache.internal:6379/2", "SENDWISE_WORKERS": "4"}
BOOLEANS = ("SENDWISE_EXPOSURE_FSYNC", "SENDWISE_ALLOW_FOREIGN_MODELS")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    """A clean SENDWISE_* environment; returns a setter."""
    import os

    for name in [n for n in os.environ if n.startswith("SENDWISE_")]:
        monkeypatch.delenv(name)

    def set_env(values: dict[str, str]) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_every_variable_is_read(env) -> None:
    env(EVERY | {"SENDWISE_DUCKDB_MEMORY_LIMIT": "1GB"})  # another module's variable: left alone
    config = ServeConfig.from_env()
    assert config == ServeConfig(
        data=Path("/srv/shop"), snapshot=Path("/srv/snap.parquet"), mlruns=Path("/srv/mlruns"), churn_alias="c1",
        propensity_alias="p1", recommender_alias="r1", exposure_log=Path("/var/log/sendwise/exposures.jsonl"),
        state_dir=Path("/var/lib/sendwise"), exposure_fsync=True, api_key=SecretStr(KEY),
        policy=Path("/srv/policy.yaml"), currency="EUR", experiments=Path("/srv/experiments.yaml"),
        consent=ConsentRule.UNLESS_REFUSED, project="shop-a", allow_foreign_models=True, timezone="Asia/Tokyo",
        product_url="https://shop.example/products/{product_id}?ref=mail", utm_source="newsletter",
        utm_medium="e-mail_v2", clock=ClockMode.DATA, event_log=Path("/var/lib/sendwise/events.jsonl"),
        segments=Path("/srv/segments.yaml"), webhook_url="https://crm.example/hooks/sendwise",
        webhook_secret=SecretStr("whsec-5c1e"), online_store=SecretStr("redis://:r3dis-pw@cache.internal:6379/2"),
        workers=4)
    assert config.rejects_dir == Path("/var/lib/sendwise/rejects")
    assert KEY not in repr(config) and KEY not in str(config.model_dump()) and KEY not in config.model_dump_json()
    assert "whsec-5c1e" not in repr(config) and "whsec-5c1e" not in config.model_dump_json()
    assert "r3dis-pw" not in repr(config) and "r3dis-pw" not in config.model_dump_json()
    assert "r3dis-pw" not in str(config.event_source)  # the online store's keys of the project, shown redacted
    assert (config.event_source.url, config.event_source.namespace) == (
        "redis://:r3dis-pw@cache.internal:6379/2", "shop-a")
    assert ServeConfig.from_env() == config and ServeConfig.from_env(currency="USD").currency == "USD"


def test_defaults_with_only_the_data(env) -> None:
    env({"SENDWISE_DATA": "shop"})
    config = ServeConfig.from_env()
    assert config == ServeConfig(data=Path("shop"))
    assert (config.snapshot, config.api_key, config.policy, config.experiments, config.state_dir) == (None,) * 5
    assert (config.mlruns, config.exposure_log, config.currency) == (Path("mlruns"), Path("exposures/exposures.jsonl"),
                                                                     "GBP")
    assert config.churn_alias == config.propensity_alias == config.recommender_alias == "champion"
    assert config.exposure_fsync is False and config.consent is ConsentRule.RECORDED
    assert (config.project, config.allow_foreign_models, config.timezone, config.product_url) == (None, False, None, None)
    assert (config.utm_source, config.utm_medium) == ("sendwise", "email")
    assert config.block_settings == BlockSettings("GBP", "sendwise", "email")
    assert config.rejects_dir == Path("exposures/state/rejects")  # next to the exposure log, never in the data
    assert config.events_path == Path("exposures/state/events.jsonl") and config.clock is ClockMode.AUTO
    assert config.event_source == config.events_path and (config.workers, config.online_store) == (1, None)


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("yes", True), ("false", False),
                                                 ("0", False), ("no", False)])
def test_booleans(env, value: str, expected: bool) -> None:
    env({"SENDWISE_DATA": "shop", "SENDWISE_EXPOSURE_FSYNC": value})
    assert ServeConfig.from_env().exposure_fsync is expected


def test_the_environment_round_trips(env, tmp_path: Path) -> None:
    """What `sendwise serve` hands the server is what the server reads."""
    given = ServeConfig(data=tmp_path / "shop", snapshot=tmp_path / "s.parquet", api_key=SecretStr(KEY),
                        state_dir=tmp_path / "state", consent=ConsentRule.UNLESS_REFUSED, exposure_fsync=True,
                        exposure_log=tmp_path / "log.jsonl", mlruns=tmp_path / "mlruns", currency="USD",
                        timezone="America/New_York", product_url="https://shop.example/p?id={product_id}",
                        utm_source="crm", utm_medium="mail", clock=ClockMode.WALL, event_log=tmp_path / "ev.jsonl",
                        online_store=SecretStr("redis://127.0.0.1:6390/0"), workers=3)
    env(given.to_env())
    assert ServeConfig.from_env() == given
    assert given.block_settings == BlockSettings("USD", "crm", "mail")
    plain = ServeConfig(data=tmp_path / "shop")
    assert "SENDWISE_TIMEZONE" not in plain.to_env() and "SENDWISE_PRODUCT_URL" not in plain.to_env()
    assert plain.to_env()["SENDWISE_UTM_SOURCE"] == "sendwise" and plain.to_env()["SENDWISE_UTM_MEDIUM"] == "email"


def test_every_variable_is_in_the_modules_table() -> None:
    """The table in serving/config.py's docstring names every setting's variable (and only those)."""
    import serving.config

    documented = set(re.findall(r"``(SENDWISE_[A-Z_]+)``", serving.config.__doc__))
    assert documented == {f"SENDWISE_{name.upper()}" for name in ServeConfig.model_fields} == set(EVERY)


@pytest.mark.parametrize(("given", "expected"), [("Asia/Tokyo", "Asia/Tokyo"), ("europe/london", "Europe/London"),
                                                 ("UTC", None), ("utc", None)])
def test_the_time_zone_is_spelled_as_duckdb_does(env, given: str, expected: str | None) -> None:
    env({"SENDWISE_DATA": "shop", "SENDWISE_TIMEZONE": given})
    assert ServeConfig.from_env().timezone == expected


def test_missing_data_names_the_variable_and_the_command(env) -> None:
    with pytest.raises(InputError, match=r"SENDWISE_DATA: not set; start the service with `sendwise serve --data DIR`"):
        ServeConfig.from_env()


@pytest.mark.parametrize("name", sorted(EVERY))
@pytest.mark.parametrize("value", ["", "   "])
def test_a_variable_set_but_empty_is_an_error(env, name: str, value: str) -> None:
    """An empty SENDWISE_API_KEY would otherwise mean an open service; the same rule for every variable."""
    env(EVERY | {name: value})
    if name in BOOLEANS:  # not text: "not a boolean"
        with pytest.raises(InputError, match=name):
            ServeConfig.from_env()
        return
    with pytest.raises(InputError, match=rf"{name}: set but empty; give it a value or unset it") as caught:
        ServeConfig.from_env()
    assert KEY not in str(caught.value)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("SENDWISE_CONSENT", "maybe", "'recorded' or 'unless-refused'"),
    ("SENDWISE_CLOCK", "sundial", "'auto', 'wall' or 'data'"),
    ("SENDWISE_WEBHOOK_URL", "ftp://crm.example/hooks", r"absolute http\(s\) URL"),
    ("SENDWISE_EXPOSURE_FSYNC", "perhaps", "boolean"),
    ("SENDWISE_TIMEZONE", "Europe/Londn", "unknown time zone 'Europe/Londn'.* Did you mean 'Europe/London'"),
    ("SENDWISE_TIMEZONE", "+09:00", "IANA time zone name"),
    ("SENDWISE_PRODUCT_URL", "https://shop.example/products/", r"no \{product_id\}"),
    ("SENDWISE_PRODUCT_URL", "/products/{product_id}", r"absolute http\(s\) URL"),
    ("SENDWISE_PRODUCT_URL", "javascript:alert('{product_id}')", r"absolute http\(s\) URL"),
    ("SENDWISE_PRODUCT_URL", "https://shop.example/{product_id}/{sku}", r"only \{product_id\}"),
    ("SENDWISE_PRODUCT_URL", "https://{product_id}.shop.example/", "not in the host"),
    ("SENDWISE_UTM_SOURCE", "news letter", "letters, digits"),
    ("SENDWISE_UTM_SOURCE", "a&utm_campaign=x", "letters, digits"),
    ("SENDWISE_UTM_MEDIUM", "x" * 101, "1 to 100"),
    ("SENDWISE_UTM_MEDIUM", "e/mail", "letters, digits"),
    ("SENDWISE_ONLINE_STORE", "http://cache.internal:6379", r"a Redis URL \(redis://, rediss://, unix://"),
    ("SENDWISE_WORKERS", "0", "greater than or equal to 1"),
    ("SENDWISE_WORKERS", "2", "2 workers need an online store they share: set SENDWISE_ONLINE_STORE"),
])
def test_a_wrong_value_names_the_variable_and_what_it_takes(env, name: str, value: str, message: str) -> None:
    env({"SENDWISE_DATA": "shop", name: value})
    with pytest.raises(InputError, match=rf"{name}: .*{message}"):
        ServeConfig.from_env()


@pytest.mark.parametrize("value", ["two", "0", "65", ""])
def test_a_wrong_worker_count_is_refused_when_the_service_module_reads_it(env, value: str) -> None:
    """The service's decorator takes SENDWISE_WORKERS when the module is imported."""
    from serving.config import workers_from_env

    env({"SENDWISE_WORKERS": value})
    with pytest.raises(InputError, match=rf"SENDWISE_WORKERS is '{value}'; expected a whole number .* from 1 to 64"):
        workers_from_env()
    env({"SENDWISE_WORKERS": " 3 "})
    assert workers_from_env() == 3


def test_the_service_refuses_to_start_with_an_empty_key(env, served_env: dict) -> None:
    """Not an open service: the worker fails on start, naming the variable."""
    env(served_env | {"SENDWISE_API_KEY": ""})
    from starlette.testclient import TestClient

    from serving.service import Sendwise

    with pytest.raises(InputError, match="SENDWISE_API_KEY: set but empty"), TestClient(Sendwise.to_asgi()):
        pass


def test_a_webhook_without_a_secret_is_refused(env) -> None:
    """Deliveries are signed: a URL alone would send customers' segment changes unsigned."""
    env({"SENDWISE_DATA": "shop", "SENDWISE_WEBHOOK_URL": "https://crm.example/hooks"})
    with pytest.raises(InputError, match="SENDWISE_WEBHOOK_URL: a webhook URL needs a secret"):
        ServeConfig.from_env()
