"""Settings of the send-time service, read from environment variables (``sendwise serve`` sets them).

| variable | meaning | default |
|---|---|---|
| ``SENDWISE_DATA`` | directory of contract tables (catalog and customers); only read | required |
| ``SENDWISE_SNAPSHOT`` | feature snapshot (parquet); built from the data when absent | none |
| ``SENDWISE_MLRUNS`` | MLflow store root (``MLFLOW_TRACKING_URI`` overrides) | ``mlruns`` |
| ``SENDWISE_CHURN_ALIAS``, ``SENDWISE_PROPENSITY_ALIAS``, ``SENDWISE_RECOMMENDER_ALIAS`` | registry aliases | ``champion`` |
| ``SENDWISE_EXPOSURE_LOG`` | append-only exposure log | ``exposures/exposures.jsonl`` |
| ``SENDWISE_STATE_DIR`` | what the service writes besides the log (the data's rejected rows, in ``rejects/``) | ``state/`` next to the exposure log |
| ``SENDWISE_API_KEY`` | when set, every route but the health checks needs header ``x-api-key`` with this value; set but empty is an error | none |
| ``SENDWISE_EXPOSURE_FSYNC`` | ``true``: force each exposure write to disk (survives a power cut) | ``false`` |
| ``SENDWISE_POLICY`` | next-best-action policy YAML | ``serving/policy.yaml`` |
| ``SENDWISE_CURRENCY`` | currency of catalog prices (ISO code) | ``GBP`` |
| ``SENDWISE_TIMEZONE`` | IANA time zone of the data's naive timestamps (``Asia/Tokyo``), as in training (see :mod:`features.timezones`) | UTC |
| ``SENDWISE_PRODUCT_URL`` | link of a product whose ``url`` is missing or unsafe: an absolute http(s) URL with ``{product_id}`` (filled in percent-encoded) | none: no link |
| ``SENDWISE_UTM_SOURCE``, ``SENDWISE_UTM_MEDIUM`` | ``utm_source`` and ``utm_medium`` of every product link (letters, digits, ``_.-``; at most 100) | ``sendwise``, ``email`` |
| ``SENDWISE_CONSENT`` | ``recorded``: email only with consent on record; ``unless-refused``: unless refused (see :mod:`serving.consent`) | ``recorded`` |
| ``SENDWISE_EXPERIMENTS`` | experiments YAML (see :mod:`serving.experiment_config`); variants of the running one | none |
| ``SENDWISE_PROJECT`` | the project whose models are served (registered as ``<project>.churn`` ...); none: the global names | none |
| ``SENDWISE_CLOCK`` | the service's clock (see :mod:`serving.clock`): ``wall``, ``data`` (the data's end plus the time since the start) or ``auto`` (``data`` when the data ended over 30 days ago) | ``auto`` |
| ``SENDWISE_EVENT_LOG`` | durable log of the events taken by ``POST /events`` and the Redis consumer (see :mod:`features.event_log`) | ``events.jsonl`` in the state directory |
| ``SENDWISE_SEGMENTS`` | segments and delayed triggers YAML (see :mod:`serving.segments`): membership per event, ``GET /segments/{customer_id}``, the trigger outbox | none |
| ``SENDWISE_WEBHOOK_URL`` | where the outbox's transitions are POSTed, signed (see :mod:`serving.webhook`) | none: the outbox only |
| ``SENDWISE_WEBHOOK_SECRET`` | the key of the deliveries' HMAC-SHA256 signature; required with a webhook URL | none |
| ``SENDWISE_ONLINE_STORE`` | a Redis URL (``redis://host:6379/0``): the event log lives there (keys ``sendwise:<project>:*``), shared by every worker and replica (see :mod:`features.redis_log`); the server must fsync its AOF (``appendonly yes``, ``appendfsync always``) | none: the file log, one worker |
| ``SENDWISE_WORKERS`` | worker processes of the service; more than one needs ``SENDWISE_ONLINE_STORE`` | 1 |
| ``SENDWISE_ALLOW_FOREIGN_MODELS`` | ``true``: serve a version registered for another project (with a warning) instead of refusing to start | ``false`` |

A variable that is set must hold a value: an empty one is an error naming it (an empty
``SENDWISE_API_KEY`` would otherwise mean an open service).

Read by the module it belongs to, not a setting here: how often a running service checks for a moved
alias or a new snapshot, SENDWISE_RELOAD_SECONDS (default 30, 0: never; see :mod:`serving.reload`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.errors import InputError
from features.event_log import EventLog, EventLogLike
from features.event_store import open_event_log
from features.io import atomic_write
from features.redis_log import NO_PROJECT, RedisLocation
from features.timezones import check_timezone
from serving.clock import ClockMode
from serving.consent import ConsentRule
from serving.product_block import UTM_MEDIUM, UTM_SOURCE, BlockSettings, check_product_url
from serving.webhook import check_webhook
from training.registry import check_project_name

logger = logging.getLogger(__name__)

ENV_PREFIX = "SENDWISE_"
WORKERS_ENV, MAX_WORKERS, ONLINE_STORE_ENV = "SENDWISE_WORKERS", 64, "SENDWISE_ONLINE_STORE"
PROJECT_ENV = "SENDWISE_PROJECT"
EVENT_LOG_RECORD = "event_log.json"  # in the state folder: where the service keeps its event log
REDIS_SCHEMES = ("redis", "rediss", "unix")
UTM_VALUE = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # as a request's campaign (serving.schemas)


def _not_empty(value: object) -> object:
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(text, str) and not text.strip():
        raise ValueError("set but empty; give it a value or unset it")
    return value


class ServeConfig(BaseModel):
    """The service's settings, given explicitly; :meth:`from_env` reads them from ``SENDWISE_*``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: Path
    snapshot: Path | None = None
    mlruns: Path = Path("mlruns")
    churn_alias: str = "champion"
    propensity_alias: str = "champion"
    recommender_alias: str = "champion"
    exposure_log: Path = Path("exposures/exposures.jsonl")
    state_dir: Path | None = None  # default: state/ next to the exposure log (see rejects_dir)
    exposure_fsync: bool = False
    api_key: SecretStr | None = None  # hidden in repr and dumps
    policy: Path | None = None
    currency: str = "GBP"
    experiments: Path | None = None
    consent: ConsentRule = ConsentRule.RECORDED
    project: str | None = None  # whose models: registered as <project>.<model> (none: the global names)
    allow_foreign_models: bool = False  # serve versions registered for another project (warned)
    timezone: str | None = None  # of the data's naive timestamps, as DuckDB spells it; None: UTC
    product_url: str | None = None  # link template of products without a safe url: https://.../{product_id}
    utm_source: str = UTM_SOURCE
    utm_medium: str = UTM_MEDIUM
    clock: ClockMode = ClockMode.AUTO
    event_log: Path | None = None  # default: events.jsonl in the state directory
    segments: Path | None = None
    webhook_secret: SecretStr | None = None  # hidden in repr and dumps (before the URL: its check reads it)
    webhook_url: str | None = None
    online_store: SecretStr | None = None  # a Redis URL; hidden in repr and dumps (it may hold a password)
    workers: int = Field(1, ge=1, le=MAX_WORKERS)

    @field_validator("*", mode="before")
    @classmethod
    def _set_means_a_value(cls, value: object) -> object:
        return _not_empty(value)

    @field_validator("project")
    @classmethod
    def _project_name(cls, value: str | None) -> str | None:
        return None if value is None else check_project_name(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return check_timezone(value)

    @field_validator("product_url")
    @classmethod
    def _product_url(cls, value: str | None) -> str | None:
        return None if value is None else check_product_url(value)

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is not None:
            secret = info.data.get("webhook_secret")
            check_webhook(url, secret.get_secret_value() if secret else None)
        return url

    @field_validator("online_store")
    @classmethod
    def _online_store(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and urlsplit(value.get_secret_value()).scheme not in REDIS_SCHEMES:
            raise ValueError(f"expected a Redis URL ({', '.join(f'{s}://' for s in REDIS_SCHEMES)}...), such as "
                             "redis://127.0.0.1:6379/0")
        return value

    @model_validator(mode="after")
    def _workers_share_through_redis(self) -> ServeConfig:
        if self.workers > 1 and self.online_store is None:
            raise ValueError(f"{self.workers} workers need an online store they share: set SENDWISE_ONLINE_STORE "
                             "(serve.online_store in sendwise.yaml) to a Redis URL; the embedded file log serves "
                             "one worker")
        return self

    @field_validator("utm_source", "utm_medium")
    @classmethod
    def _utm(cls, value: str) -> str:
        if not UTM_VALUE.fullmatch(value):
            raise ValueError(f"expected 1 to 100 letters, digits, '_', '.' or '-' (it goes into every product "
                             f"link as it is, like a campaign); got {value!r}")
        return value

    @property
    def block_settings(self) -> BlockSettings:
        """What the product blocks show as this shop chose: currency, utm_source and utm_medium."""
        return BlockSettings(self.currency, self.utm_source, self.utm_medium)

    @classmethod
    def from_env(cls, **given: object) -> ServeConfig:
        """The settings in ``SENDWISE_*`` variables, ``given`` ones taking their place; an
        :class:`~features.errors.InputError` names each variable that is missing or wrong."""
        try:
            settings = _EnvConfig(**{k: v for k, v in given.items() if v is not None})
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False, include_input=False):
                field = str(error["loc"][0]) if error["loc"] else "workers"  # the one rule across fields
                name = f"{ENV_PREFIX}{field.upper()}" if field not in given else f"--{field.replace('_', '-')}"
                message = error["msg"].removeprefix("Value error, ")
                if field == "data" and error["type"] == "missing":
                    message = "not set; start the service with `sendwise serve --data DIR`"
                problems.append(f"{name}: {message}")
            raise InputError("service settings: " + "; ".join(problems) + ".") from None
        return ServeConfig(**dict(settings))

    @property
    def state_folder(self) -> Path:
        """What the service writes besides the exposure log: ``state_dir``, or ``state/`` next to the log."""
        return self.state_dir or self.exposure_log.parent / "state"

    @property
    def rejects_dir(self) -> Path:
        """Where the data's rejected rows are written: never inside the data directory, which the
        service only reads (it may be a read-only mount)."""
        return self.state_folder / "rejects"

    @property
    def events_path(self) -> Path:
        """The event log: ``event_log``, or ``events.jsonl`` in the state folder."""
        return self.event_log or self.state_folder / "events.jsonl"

    @property
    def event_source(self) -> Path | RedisLocation:
        """Where the event log is: in the online store (Redis, keys of this project) when one is set, else
        the file :attr:`events_path`."""
        if self.online_store is None:
            return self.events_path
        return RedisLocation(self.online_store.get_secret_value(), self.project or NO_PROJECT)

    def open_event_log(self) -> EventLogLike:
        """The event log at :attr:`event_source`, opened for appending (a Redis one checked to be durable);
        where it is goes on record in the state folder (:func:`recorded_event_log`)."""
        log = open_event_log(self.event_source)
        source = self.event_source
        record = ({"kind": "redis", "namespace": source.namespace, "where": str(source)}
                  if isinstance(source, RedisLocation) else {"kind": "file", "path": str(source)})
        if isinstance(source, RedisLocation) and self.events_path.is_file():
            record["imported"] = self._import_file_log(log)
        path = self.state_folder / EVENT_LOG_RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n"))
        return log

    def _import_file_log(self, log: EventLogLike) -> int:
        """Copy the file log a service wrote before the project moved to the online store into it (once
        per size of the file; an event_id Redis holds already is a repeat), so that every event
        acknowledged before the move is served and trained on; returns the file's size copied."""
        size = self.events_path.stat().st_size
        recorded = recorded_event_log(self.state_folder) or {}
        if recorded.get("kind") == "redis" and recorded.get("imported") == size:
            return size
        copied, conflicts = 0, []
        with EventLog(self.events_path) as file_log:
            for events, _ in file_log.chunks():
                if events:
                    result = log.append(events)
                    copied, conflicts = copied + len(result.new), conflicts + result.conflicts
        if conflicts:
            raise InputError(f"the file log {self.events_path} and the online store {self.event_source} give the "
                             f"event_ids {', '.join(map(repr, conflicts[:5]))} to different events; expected one "
                             "event per id. Remove those lines from the file (its events are copied into Redis "
                             "when the service starts) or from Redis.")
        logger.info("copied %d event(s) of %s into the online store %s", copied, self.events_path, self.event_source)
        return size

    def to_env(self) -> dict[str, str]:
        env = {"SENDWISE_DATA": str(self.data.resolve()), "SENDWISE_MLRUNS": str(self.mlruns.resolve()),
               "SENDWISE_CHURN_ALIAS": self.churn_alias, "SENDWISE_PROPENSITY_ALIAS": self.propensity_alias,
               "SENDWISE_RECOMMENDER_ALIAS": self.recommender_alias,
               "SENDWISE_EXPOSURE_LOG": str(self.exposure_log.resolve()),
               "SENDWISE_EXPOSURE_FSYNC": str(self.exposure_fsync).lower()}
        if self.snapshot:
            env["SENDWISE_SNAPSHOT"] = str(self.snapshot.resolve())
        if self.state_dir:
            env["SENDWISE_STATE_DIR"] = str(self.state_dir.resolve())
        if self.api_key:
            env["SENDWISE_API_KEY"] = self.api_key.get_secret_value()
        if self.policy:
            env["SENDWISE_POLICY"] = str(self.policy.resolve())
        if self.experiments:
            env["SENDWISE_EXPERIMENTS"] = str(self.experiments.resolve())
        if self.project:
            env["SENDWISE_PROJECT"] = self.project
        env["SENDWISE_ALLOW_FOREIGN_MODELS"] = str(self.allow_foreign_models).lower()
        env["SENDWISE_CURRENCY"] = self.currency
        env["SENDWISE_CONSENT"] = self.consent.value
        if self.timezone:
            env["SENDWISE_TIMEZONE"] = self.timezone
        if self.product_url:
            env["SENDWISE_PRODUCT_URL"] = self.product_url
        env["SENDWISE_UTM_SOURCE"] = self.utm_source
        env["SENDWISE_UTM_MEDIUM"] = self.utm_medium
        env["SENDWISE_CLOCK"] = self.clock.value
        if self.event_log:
            env["SENDWISE_EVENT_LOG"] = str(self.event_log.resolve())
        if self.segments:
            env["SENDWISE_SEGMENTS"] = str(self.segments.resolve())
        if self.webhook_url:
            env["SENDWISE_WEBHOOK_URL"] = self.webhook_url
        if self.webhook_secret:
            env["SENDWISE_WEBHOOK_SECRET"] = self.webhook_secret.get_secret_value()
        if self.online_store:
            env[ONLINE_STORE_ENV] = self.online_store.get_secret_value()
        env[WORKERS_ENV] = str(self.workers)
        return env


def recorded_event_log(state_folder: Path) -> dict | None:
    """Where the service of ``state_folder`` keeps its event log, as it recorded when it started
    (``{"kind": "redis", "namespace": ..., "where": <URL without password> ...}`` or ``{"kind": "file",
    "path": ...}``); None when no service recorded one there. The commands that read the log (``run``,
    ``privacy``) check it, so that none of them reads a file while the events are in Redis."""
    path = Path(state_folder) / EVENT_LOG_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise InputError(f"{path} is not JSON; expected where the service keeps its event log, as it writes it. "
                         "Delete it: the service writes it again when it starts.") from None
    return record if isinstance(record, dict) else None


def workers_from_env() -> int:
    """``SENDWISE_WORKERS`` for the service's decorator (read when the module is imported); 1 when unset.
    The whole setting, with its rule about the online store, is checked when the service starts."""
    text = os.environ.get(WORKERS_ENV, "1").strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_WORKERS:
        raise InputError(f"service settings: {WORKERS_ENV} is {text[:20]!r}; expected a whole number of worker "
                         f"processes from 1 to {MAX_WORKERS}.")
    return int(text)


class _EnvConfig(ServeConfig, BaseSettings):
    """:class:`ServeConfig` read from ``SENDWISE_<FIELD>`` variables (pydantic-settings); other
    ``SENDWISE_*`` variables (read elsewhere) are left alone."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)
