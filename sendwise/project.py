"""A project: one shop, its settings in ``DIR/sendwise.yaml``, everything it writes under ``DIR``.

``sendwise init DIR`` writes the file; every command reads it (``--project DIR``, or the current
directory when it holds ``sendwise.yaml``) and options given on the command line win. Relative paths
in the file are relative to ``DIR``. What a project writes::

    DIR/sendwise.yaml      the settings (written once by init, only read after)
    DIR/data/              contract tables (when the project imports a shop's export)
    DIR/mlruns/            MLflow store (unless tracking_uri or MLFLOW_TRACKING_URI says otherwise)
    DIR/state/             serving snapshot, rejected rows, exposure log, event log, the run lock
    DIR/reports/           one HTML report per `sendwise run`

Registered models are named ``<name>.churn``, ``<name>.propensity`` and ``<name>.recommender``
(:func:`training.registry.registered_name`), so two shops never share a champion, even on one
MLflow server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from features.config import CONFIG_ENV
from features.dates import parse_iso_date
from features.demo import DemoShop
from features.errors import InputError, NotFoundError, validation_problems
from features.importers import ImportFormat, run_import
from features.importers.mapping import check_mapping
from features.io import Encoding
from features.redis_log import RedisLocation
from features.rfm import RfmRanks
from features.schema import Table
from features.timezones import check_timezone
from sendwise import pipeline
from sendwise.engines import EngineName
from serving.clock import ClockMode
from serving.config import EVENT_LOG_RECORD, ONLINE_STORE_ENV, UTM_VALUE, recorded_event_log
from serving.consent import ConsentRule
from serving.product_block import check_product_url
from training.recommenders.models import TUNABLE
from training.recommenders.selection import AUTO
from training.registry import check_project_name
from training.tracking import configure_tracking, use_project_store

PROJECT_FILE = "sendwise.yaml"
DEFAULT_DATA = Path("data")


class ImportSettings(BaseModel):
    """A shop export that ``sendwise run`` converts to the contract tables in ``data`` first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: ImportFormat
    source: Path
    map: dict[str, str] = Field(default_factory=dict, description="contract column: source column (csv, shopify)")
    encoding: Encoding = Encoding.UTF_8

    @field_validator("format")
    @classmethod
    def _shop_format(cls, value: ImportFormat) -> ImportFormat:
        if value is ImportFormat.MOVIELENS:
            raise ValueError("movielens ratings are a recommender benchmark, not a shop's export")
        return value

    @field_validator("map")
    @classmethod
    def _mapping(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            return check_mapping(value)
        except InputError as exc:
            raise ValueError(str(exc)) from None


class LinkSettings(BaseModel):
    """Product links in emails: a template for shops whose catalog has no URLs, and UTM parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product_url: str | None = Field(None, description="e.g. https://shop.example/products/{product_id}")
    utm_source: str = "sendwise"
    utm_medium: str = "email"

    @field_validator("product_url")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return None if value is None else check_product_url(value)

    @field_validator("utm_source", "utm_medium")
    @classmethod
    def _utm(cls, value: str) -> str:
        if not UTM_VALUE.fullmatch(value):  # as the service checks SENDWISE_UTM_*
            raise ValueError(f"must be 1-100 letters, digits, '_', '.' or '-'; got {value!r}")
        return value


class ServeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    clock: ClockMode = Field(ClockMode.AUTO, description="wall, data (the data's end + time since start) or auto")
    webhook_url: str | None = Field(None, description="segment and trigger transitions POSTed here, signed with "
                                    "the secret in SENDWISE_WEBHOOK_SECRET")
    online_store: str | None = Field(None, description="a Redis URL: the event log lives there, shared by every "
                                     "worker (SENDWISE_ONLINE_STORE overrides, e.g. to keep a password out of here)")
    workers: int = Field(1, ge=1, le=64, description="worker processes; more than one needs online_store")


class RunSettings(BaseModel):
    """What ``sendwise run`` trains and how a challenger must win."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    margin: float = Field(0.005, ge=-0.1, le=0.1, description="gain the challenger must show (ROC-AUC; NDCG@k)")
    trials: int = Field(0, ge=0, le=500, description="Optuna trials per model (0: default parameters)")
    churn_horizon_days: int = Field(90, ge=7, le=730)
    propensity_horizon_days: int = Field(30, ge=7, le=365)
    periods: int = Field(12, ge=3, le=60, description="monthly as_of dates stacked at most")
    recommender: str = Field(AUTO, description="auto (chosen per shop on the validation fold) or one of "
                             f"{', '.join(TUNABLE)}")
    k: int = Field(10, ge=1, le=100)
    window_days: int = Field(90, ge=7, le=365, description="the recommender's holdout and tuning windows")
    clv_horizon_days: int = Field(365, ge=7, le=3650, description="customer lifetime value over this many days "
                                  "(180 or 90 when the history is shorter)")

    @field_validator("recommender")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in (AUTO, *TUNABLE):
            raise ValueError(f"must be one of {', '.join((AUTO, *TUNABLE))}")
        return value


class SparkTraining(StrEnum):
    """How ``sendwise train churn|propensity`` trains on Spark (docs/scale.md)."""

    SAMPLE = "sample"  # a seeded sample of customers on one node, today's trainer (kind choice, CLV, trials)
    FULL = "full"  # every row, SparkXGBClassifier (training.spark_training): XGBoost, default parameters


class SparkSettings(BaseModel):
    """Where Spark runs and what it reads, for ``engine: spark`` (docs/scale.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    master: str | None = Field(None, description="default: SPARK_MASTER, else local[*]")
    conf: dict[str, str] = Field(default_factory=dict, description="Spark settings, e.g. spark.driver.memory: 8g")
    tables: dict[Table, str] = Field(default_factory=dict, description="per contract table a Parquet path (any "
                                     "path Spark reads) or table:<catalog name>; default: the project's data")
    sample_customers: int = Field(2_000_000, ge=100, description="customers copied to one node to train a model")
    training: SparkTraining = Field(SparkTraining.SAMPLE, description="sample (sample_customers on one node) or "
                                    "full (every row, SparkXGBClassifier)")
    driver_rows: int = Field(2_000_000, ge=1_000, description="full training: rows of a fold's scores brought to "
                             "the driver to calibrate and evaluate; above it, a seeded sample of customers")
    xgboost_workers: int | None = Field(None, ge=1, description="full training: SparkXGBClassifier's num_workers "
                                        "(default: the session's default parallelism)")
    rfm_ranks: RfmRanks = Field(RfmRanks.EXACT, description="exact (percent_rank over every buyer, in one task) or "
                                "approximate (cut points from one distributed percentile_approx; docs/scale.md)")


class ProjectSettings(BaseModel):
    """The contents of ``sendwise.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str | None = Field(None, description="default: the project folder's name")
    data: Path = DEFAULT_DATA
    import_: ImportSettings | None = Field(None, alias="import")
    timezone: str = Field("UTC", description="time zone of timestamps without one")
    currency: str = Field("GBP", pattern=r"^[A-Z]{3}$")
    links: LinkSettings = LinkSettings()
    consent: ConsentRule = ConsentRule.RECORDED
    tracking_uri: str | None = Field(None, description="default: a SQLite store in mlruns/ (MLFLOW_TRACKING_URI wins)")
    serve: ServeSettings = ServeSettings()
    policy: Path | None = None
    segments: Path | None = Field(None, description="default: segments.yaml in the project folder, when there")
    experiments: Path | None = None
    feature_config: Path | None = None
    run: RunSettings = RunSettings()
    engine: EngineName = Field(EngineName.DUCKDB, description="duckdb (one machine) or spark (docs/scale.md)")
    spark: SparkSettings = SparkSettings()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None:
            check_project_name(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        check_timezone(value)
        return value


@dataclass(frozen=True)
class Project:
    """A project folder and its settings; paths resolved against the folder."""

    root: Path
    settings: ProjectSettings

    @property
    def name(self) -> str:
        return self.settings.name or self.root.name

    def path(self, path: Path) -> Path:
        return path if path.is_absolute() else self.root / path

    @property
    def file(self) -> Path:
        return self.root / PROJECT_FILE

    @property
    def spark(self) -> SparkSettings:
        """The Spark settings, a local table path made relative to the project folder (a URI such as
        ``s3a://...`` and ``table:<name>`` stay as written)."""
        tables = {table: source if source.startswith("table:") or "://" in source else str(self.path(Path(source)))
                  for table, source in self.settings.spark.tables.items()}
        return self.settings.spark.model_copy(update={"tables": tables})

    @property
    def data(self) -> Path:
        return self.path(self.settings.data)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def snapshot(self) -> Path:
        return self.state / "snapshot.parquet"

    @property
    def rejects(self) -> Path:
        return self.state / "rejects"

    @property
    def exposure_log(self) -> Path:
        return self.state / "exposures.jsonl"

    @property
    def event_log(self) -> Path:
        """The events taken by the service (``POST /events``, the stream consumer): ``sendwise run`` trains on them."""
        return self.state / "events.jsonl"

    @property
    def online_store(self) -> str | None:
        """The Redis URL of the online store: ``SENDWISE_ONLINE_STORE``, else ``serve.online_store``; None: none."""
        return os.environ.get(ONLINE_STORE_ENV) or self.settings.serve.online_store

    @property
    def event_source(self) -> Path | RedisLocation:
        """Where the service logs events: in the online store (keys of this project) when there is one,
        else :attr:`event_log`."""
        url = self.online_store
        if url is None:
            recorded = recorded_event_log(self.state)
            if recorded is not None and recorded.get("kind") == "redis":
                raise InputError(f"the service of project {self.name} keeps its events in Redis "
                                 f"({recorded.get('where')}, as {self.state / EVENT_LOG_RECORD} says), but no URL "
                                 f"of it is set here: set {ONLINE_STORE_ENV} (or serve.online_store in sendwise.yaml) "
                                 "so that this command reads the events there, not a file without them.")
            return self.event_log
        return RedisLocation(url, self.name)

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def optional(self, path: Path | None) -> Path | None:
        return None if path is None else self.path(path)

    @property
    def segments(self) -> Path | None:
        """The segments file: the ``segments`` setting, else ``segments.yaml`` here when there is one."""
        if self.settings.segments is not None:
            return self.path(self.settings.segments)
        default = self.root / "segments.yaml"
        return default if default.exists() else None

    @property
    def tracking_uri(self) -> str | None:
        """The ``tracking_uri`` setting, a relative SQLite path resolved against the project folder."""
        uri = self.settings.tracking_uri
        if uri and uri.startswith("sqlite:///") and not uri.removeprefix("sqlite:///").startswith("/"):
            return f"sqlite:///{self.root / uri.removeprefix('sqlite:///')}"
        return uri

    def use_tracking(self) -> str:
        """Point MLflow at this project's store (``MLFLOW_TRACKING_URI`` wins); returns the URI."""
        use_project_store(self.tracking_uri)
        return configure_tracking(self.mlruns)


def load_project(root: Path) -> Project:
    """The project in ``root``; an error names the file and each setting that is wrong."""
    file = root / PROJECT_FILE
    if not file.is_file():
        raise NotFoundError(f"{file} does not exist: {root} is not a sendwise project. Create one with "
                            f"`sendwise init {root} --data DIR` (or --import FORMAT FILE, or --demo).")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{file} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{file} must hold a mapping of settings (name: ..., data: ...); got {type(raw).__name__}.")
    try:
        settings = ProjectSettings.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{file}: {validation_problems(exc)}") from None
    project = Project(root.resolve(), settings)
    check_project_name(project.name, f"the folder name of {project.root} (set `name:` in {PROJECT_FILE})")
    return project


def find_project(option: Path | None) -> Project | None:
    """The project of ``--project DIR``, else the current directory's when it holds ``sendwise.yaml``,
    else None (commands then work from their options alone)."""
    here = Path.cwd()
    project = load_project(option) if option is not None else (
        load_project(here) if (here / PROJECT_FILE).is_file() else None)
    use_project_store(None if project is None else project.tracking_uri)  # later configure_tracking calls use it
    return project


UNSET_SERVE = ("workers", "online_store")  # left to the environment unless the file sets them


def render_settings(settings: ProjectSettings) -> str:
    """``sendwise.yaml`` for ``settings``, commented so that a user can edit it without the docs."""
    values = settings.model_dump(mode="json", by_alias=True, exclude_none=False)

    def block(key: str) -> str:
        return yaml.safe_dump({key: values[key]}, sort_keys=False, allow_unicode=True).rstrip()

    lines = [
        "# sendwise project: one shop. Paths are relative to this file's folder. Reference: docs/projects.md",
        "# Registered models are <name>.churn, <name>.propensity and <name>.recommender.",
        block("name") if values["name"] else "# name: my-shop  # default: this folder's name",
        "# contract tables (orders required; customers, products, events optional)",
        block("data"),
    ]
    if values["import"]:
        lines += ["# `sendwise run` converts this export into `data` first", block("import")]
    else:
        lines.append("# import: {format: shopify, source: orders_export.csv}  # or online-retail, online-retail-ii,"
                     " csv (with map: {ordered_at: Paid at, ...})")
    lines += [
        "# time zone of timestamps that carry none (IANA name, e.g. Europe/London)",
        block("timezone"),
        block("currency"),
        "# product_url: link template for catalogs without URLs, e.g. https://shop.example/p/{product_id}",
        block("links"),
        "# recorded: email only customers with consent on record; unless-refused: all but recorded refusals",
        block("consent"),
        "# MLflow store; default: SQLite under mlruns/ (the MLFLOW_TRACKING_URI variable wins)",
        block("tracking_uri"),
        yaml.safe_dump({"serve": {k: v for k, v in values["serve"].items() if k not in UNSET_SERVE}}, sort_keys=False,
                       allow_unicode=True).rstrip(),
        "  # workers: 2                              # more than one needs the online store they share:",
        "  # online_store: redis://127.0.0.1:6379/0  # (or SENDWISE_ONLINE_STORE, SENDWISE_WORKERS; docs/live.md)",
        "# next-best-action policy, experiments and feature settings files (default: built-in); segments and",
        "# delayed triggers (default: segments.yaml here, when there; docs/segments.md)",
        block("policy"), block("segments"), block("experiments"), block("feature_config"),
        "# sendwise run: Optuna trials, label horizons, the recommender, the margin a challenger must win by",
        block("run"),
        "# engine: spark  # features, training sets, scores and recommendations on Spark (docs/scale.md), with",
        "# spark: {master: 'spark://host:7077', tables: {orders: 's3a://lake/shop/orders/'}, sample_customers: 2000000}",
    ]
    return "\n".join(lines) + "\n"


def create_project(directory: Path, *, data: Path | None = None, import_: tuple[ImportFormat, Path] | None = None,
                   mapping: dict[str, str] | None = None, demo: bool = False, name: str | None = None,
                   timezone: str = "UTC", currency: str = "GBP", consent: ConsentRule = ConsentRule.RECORDED,
                   customers: int = 10_000, seed: int = 0) -> Project:
    """``sendwise init``: a project over contract tables (``data``, read where they are), over a
    shop's export (``import_``: converted into ``directory/data`` now and at every run) or over the
    generated demo shop (``demo``); its data is validated before the command ends."""
    given = [flag for flag, value in (("--data", data), ("--import", import_), ("--demo", demo)) if value]
    if len(given) != 1:
        raise InputError("give exactly one of --data DIR (contract tables), --import FORMAT FILE (a shop's export) "
                         f"or --demo; got {', '.join(given) or 'none'}.")
    if mapping and not import_:
        raise InputError("--map goes with --import csv FILE.")
    if (directory / PROJECT_FILE).exists():
        raise InputError(f"{directory / PROJECT_FILE} already exists; edit it, or choose another folder.")
    check_project_name(name or directory.resolve().name, "given with --name" if name else "the folder's name; pass --name")
    fields: dict[str, object] = {"name": name, "timezone": timezone, "currency": currency.upper(), "consent": consent}
    if data is not None:
        if not data.is_dir():
            raise InputError(f"--data {data}: not a directory of contract tables.")
        fields["data"] = data.resolve()
    if import_ is not None:
        fields["import"] = {"format": import_[0], "source": import_[1].resolve(), "map": mapping or {}}
    try:
        settings = ProjectSettings(**fields)  # a bad setting fails before anything is written
    except ValidationError as exc:
        raise InputError(f"project settings: {validation_problems(exc)}") from None
    target = directory / DEFAULT_DATA
    if demo:
        shop = DemoShop(customers=customers, seed=seed)
        pipeline.generate(target, customers=customers, seed=seed, start=parse_iso_date(shop.start),
                          end=parse_iso_date(shop.end))
    elif import_ is not None:
        pipeline.print_import(run_import(import_[0], import_[1], target, mapping=mapping or None, timezone=timezone))
    project = write_project(directory, settings)
    pipeline.validate(project.data, project.rejects, timezone=settings.timezone)
    return project


def write_project(root: Path, settings: ProjectSettings) -> Project:
    """Create ``root/sendwise.yaml``; an existing one is never overwritten."""
    root.mkdir(parents=True, exist_ok=True)
    file = root / PROJECT_FILE
    try:
        with file.open("x", encoding="utf-8") as handle:
            handle.write(render_settings(settings))
    except FileExistsError:
        raise InputError(f"{file} already exists; edit it, or choose another folder.") from None
    return load_project(root)


def serve_settings(project: Project) -> dict[str, object]:
    """The service's settings (:class:`serving.config.ServeConfig` fields) the project gives."""
    settings = project.settings
    given = {"data": project.data, "snapshot": project.snapshot, "mlruns": project.mlruns,
            "exposure_log": project.exposure_log, "state_dir": project.state, "project": project.name,
            "policy": project.optional(settings.policy), "experiments": project.optional(settings.experiments),
            "currency": settings.currency, "consent": settings.consent, "timezone": settings.timezone,
            "product_url": settings.links.product_url, "utm_source": settings.links.utm_source,
            "utm_medium": settings.links.utm_medium, "clock": settings.serve.clock, "event_log": project.event_log,
            "segments": project.segments, "webhook_url": settings.serve.webhook_url,
            "online_store": project.online_store}
    if "workers" in settings.serve.model_fields_set:  # else SENDWISE_WORKERS, or the default
        given["workers"] = settings.serve.workers
    return given


def apply_feature_settings(project: Project | None) -> None:
    """Make the project's feature settings file (when it names one) the one :meth:`FeatureConfig.current`
    reads in this process and the service it starts: the project's file wins over the environment's,
    as in ``sendwise run``."""
    if project is not None and project.settings.feature_config is not None:
        os.environ[CONFIG_ENV] = str(project.path(project.settings.feature_config))
