"""What the service holds in memory: champion models, scores of every known customer, catalog.

Scores are computed once at startup from the feature snapshot (a request is then a lookup);
recommendations are computed per request from the recommender's factors and the business rules.
The data directory is only read: rejected rows go to the state directory
(:attr:`~serving.config.ServeConfig.rejects_dir`); its naive timestamps are local times of the
shop's time zone (:attr:`~serving.config.ServeConfig.timezone`), as in training. Catalog links that
are not absolute http(s) URLs and control characters in product names are removed as the catalog is
loaded (:func:`safe_catalog`), so no business rule, list or block ever sees them; a product left
without a link gets one from the shop's link template, when it has one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import mlflow
import pandas as pd

from features.attributes import CURRENT_ATTRIBUTES, current_attributes, with_current_attributes
from features.build import build_features
from features.config import CONFIG_ENV, FeatureConfig
from features.errors import SendwiseError
from features.io import load_data_dir
from features.links import safe_http_url
from features.registry import registry
from features.schema import CATEGORY, CUSTOMER_ID, IMAGE_URL, NAME, PRODUCT_ID, URL, Table
from features.snapshot import read_snapshot, snapshot_as_of
from features.tables import Tables
from serving.config import ServeConfig
from serving.lookup import Lookup
from serving.product_block import clean_text, product_link
from training.design import trained_feature_config
from training.model import ModelBundle
from training.recommenders.batch import RecommendationContext
from training.recommenders.models import Recommender
from training.recommenders.store import REGISTERED_NAME
from training.recommenders.store import load_version as load_recommender_version
from training.registry import (
    ForeignModelError,
    ModelProvenance,
    alias_version,
    check_provenance,
    load_version,
    registered_name,
    version_provenance,
)
from training.scoring import CLV_FIELDS, REASONS, score_features, score_row
from training.tracking import configure_tracking

logger = logging.getLogger(__name__)

SCORE_FIELDS = ("churn_probability", "purchase_probability", "churn_risk", "rfm_segment", "lifecycle_stage",
                *CLV_FIELDS)


def signal_features(config: FeatureConfig | None = None) -> list[str]:
    """Snapshot features the next-best-action policy may use as signals (with the score fields): those
    the feature registry declares as signals, for the feature settings ``config``."""
    return [name for name in registry(config).signals() if name not in SCORE_FIELDS]


class NotReadyError(SendwiseError):
    """Something the service needs is missing; the message names it and the command that makes it."""


class CustomerTable:
    """Scores, reasons and policy signals of every customer in the snapshot, held column-wise
    (arrays, one row per customer) so that a million customers stay cheap for the garbage collector.

    With live profiles attached (:attr:`live`, see :mod:`serving.live`), a customer touched by an
    event is answered from their fresh features instead, scored with this table's models
    (:meth:`score_one`) and cached in :attr:`fresh`."""

    def __init__(self, features: pd.DataFrame, churn: ModelBundle, propensity: ModelBundle,
                 current: pd.DataFrame | None = None, config: FeatureConfig | None = None) -> None:
        self.churn, self.propensity, self.config = churn, propensity, config
        scores = score_features(features, churn, propensity)
        self.row = {cid: i for i, cid in enumerate(scores[CUSTOMER_ID])}
        signals = features[[CUSTOMER_ID, *signal_features(config)]].reset_index(drop=True)
        if current is not None:  # consent and country as of today: checked at send time
            signals = with_current_attributes(signals, current)
        self._today = current.set_index(CUSTOMER_ID) if current is not None else None
        combined = scores[list(SCORE_FIELDS)].join(signals.drop(columns=CUSTOMER_ID))
        combined["next_order_date"] = combined["next_order_date"].dt.date  # a day, as /score answers it
        self.columns = {c: combined[c].astype(object).where(combined[c].notna(), None).to_numpy()
                        for c in combined.columns}
        self.reasons = scores[[f"reason_{i + 1}" for i in range(REASONS)]].to_numpy(object)
        self.live: LiveView | None = None
        self.fresh: dict[str, tuple[int, float, dict, dict]] = {}  # customer -> (version, at, scores, signals)

    def __len__(self) -> int:
        return len(self.row)

    def __contains__(self, customer_id: str) -> bool:
        return customer_id in self.row or self._live(customer_id) is not None

    def _live(self, customer_id: str) -> tuple[dict, dict] | None:
        return None if self.live is None else self.live(self, customer_id)

    def scores(self, customer_id: str) -> dict | None:
        """Score fields and reasons, or None for a customer not in the snapshot nor seen in an event."""
        fresh = self._live(customer_id)
        if fresh is not None:
            return fresh[0]
        row = self.row.get(customer_id)
        if row is None:
            return None
        return {c: self.columns[c][row] for c in SCORE_FIELDS} | {
            "reasons": [r for r in self.reasons[row] if isinstance(r, str)]}

    def signals(self, customer_id: str) -> dict:
        """Policy signals (score fields and :func:`signal_features`, attributes as of today); empty for an
        unknown customer."""
        fresh = self._live(customer_id)
        if fresh is not None:
            return fresh[1]
        row = self.row.get(customer_id)
        return {} if row is None else {c: v[row] for c, v in self.columns.items()}

    def score_one(self, customer_id: str, values: dict, at: datetime | None = None) -> tuple[dict, dict]:
        """(scores, signals) of one customer from their feature ``values`` at ``at``, as the snapshot's
        rows are: attributes as of today where on record."""
        scored = score_row(values, self.churn, self.propensity, at)
        record = {c: _plain(scored[c]) for c in SCORE_FIELDS}
        if record["next_order_date"] is not None:
            record["next_order_date"] = record["next_order_date"].date()
        signals = {c: _plain(values.get(c)) for c in signal_features(self.config)}
        if self._today is not None and customer_id in self._today.index:
            for name in CURRENT_ATTRIBUTES:
                today = self._today.at[customer_id, name] if name in self._today else None
                if name in signals and _plain(today) is not None:
                    signals[name] = today
        reasons = [scored[f"reason_{i + 1}"] for i in range(REASONS)]
        return record | {"reasons": [r for r in reasons if isinstance(r, str)]}, record | signals


LiveView = Callable[[CustomerTable, str], "tuple[dict, dict] | None"]


def _plain(value: object) -> object:
    """None for a missing value (NaN, NA), the value otherwise, as the snapshot's arrays hold them."""
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


@dataclass
class ServingState:
    as_of: datetime
    customers: CustomerTable
    churn: ModelBundle
    propensity: ModelBundle
    recommender: Recommender
    recommender_version: str
    recommendations: RecommendationContext
    lookup: Lookup
    recommender_provenance: ModelProvenance = field(default_factory=lambda: ModelProvenance(None, None, None, None))
    tables: Tables | None = None  # the data it was loaded from, until the online store has copied it
    snapshot: pd.DataFrame | None = None  # the features it was scored from, until the online store has its keys

    @property
    def versions(self) -> dict[str, str]:
        return {"churn": str(self.churn.meta["version"]), "propensity": str(self.propensity.meta["version"]),
                "recommender": self.recommender_version}


Aliases = tuple[str, str, str]  # churn, propensity, recommender


def config_aliases(config: ServeConfig) -> Aliases:
    return config.churn_alias, config.propensity_alias, config.recommender_alias


FOREIGN_OVERRIDE = "set SENDWISE_ALLOW_FOREIGN_MODELS=true"
MIN_CATALOG_COVERAGE = 0.5  # below this share of the catalog known to the recommender, serve warns


@dataclass
class Champions:
    churn: ModelBundle
    propensity: ModelBundle
    recommender: Recommender
    recommender_version: str
    provenance: dict[str, ModelProvenance] = field(default_factory=dict)  # per model: churn, propensity, recommender
    warnings: list[str] = field(default_factory=list)  # models of other data (or allowed foreign ones)


def _load(model: str, alias: str, load: Callable[[str], object],
          config: ServeConfig) -> tuple[object, str, ModelProvenance, str | None]:
    """``load(version)`` of the version of ``model`` (of the configured project) carrying ``alias``,
    that version, its provenance and a warning (or None); or :class:`NotReadyError` naming the model,
    the version and what to do when it is missing, foreign (registered for another project) or does
    not load."""
    name = registered_name(model, config.project)
    version = alias_version(name, alias)
    if version is None:
        project = f" --project {config.project}" if config.project else ""
        raise NotReadyError(f"no '{name}' model has the alias '{alias}' in {mlflow.get_tracking_uri()}. Create it with "
                            f"`sendwise train {model} --data DIR --as-of DATE{project}`.")
    provenance = version_provenance(name, version)
    try:
        warning = check_provenance(name, version, provenance, config.project, config.allow_foreign_models,
                                   str(config.data.resolve()), FOREIGN_OVERRIDE)
    except ForeignModelError as exc:
        raise NotReadyError(str(exc)) from exc
    try:
        return load(version), version, provenance, warning
    except Exception as exc:  # whatever a missing or corrupt artifact raises, say which
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise NotReadyError(
            f"the '{name}' model version {version} (alias '{alias}') could not be loaded: its artifact "
            f"(models:/{name}/{version}) is missing or corrupt ({type(exc).__name__}: {detail}). Point the "
            f"alias at a good version (`sendwise models promote {model} --force` promotes the challenger) "
            f"or retrain (`sendwise train {model} --data DIR --as-of DATE`).") from exc


def load_champions(config: ServeConfig, aliases: Aliases | None = None) -> Champions:
    """The models of one alias set (default: the configured ones) of the configured project, or
    :class:`NotReadyError` naming the one that is missing, broken or registered for another project
    (``sendwise serve`` calls this before starting the server). ``warnings`` names models trained on
    another data directory than the one served (without a project) and foreign ones allowed."""
    configure_tracking(config.mlruns)
    churn_alias, propensity_alias, recommender_alias = aliases or config_aliases(config)
    project = config.project
    loaded = {
        "churn": _load("churn", churn_alias, lambda v: load_version("churn", v, project), config),
        "propensity": _load("propensity", propensity_alias, lambda v: load_version("propensity", v, project), config),
        "recommender": _load(REGISTERED_NAME, recommender_alias, lambda v: load_recommender_version(v, project),
                             config),
    }
    (churn, *_), (propensity, *_), (recommender, version, *_) = loaded.values()
    return Champions(churn, propensity, recommender, version, {m: got[2] for m, got in loaded.items()},
                     [got[3] for got in loaded.values() if got[3]])


def catalog_coverage(recommender: Recommender, tables: Tables) -> str | None:
    """A warning when ``recommender`` knows under :data:`MIN_CATALOG_COVERAGE` of the catalog's
    product ids (it was trained on other data?), else None."""
    products = tables.con.execute(f"SELECT DISTINCT {PRODUCT_ID} FROM {Table.PRODUCTS.value}").fetchall()
    catalog = {str(r[0]) for r in products if r[0] is not None}
    if not catalog or recommender.product_ids_ is None:
        return None
    known = len(catalog & set(recommender.product_ids_.astype(str)))
    if known >= MIN_CATALOG_COVERAGE * len(catalog):
        return None
    return (f"the recommender knows {known:,} of the catalog's {len(catalog):,} product ids "
            f"({known / len(catalog):.0%}): trained on other data? Its lists will be mostly popular products; "
            "retrain it on this shop's data.")


@dataclass(frozen=True)
class CatalogCheck:
    """What :func:`safe_catalog` removed: links that were not absolute http(s) URLs (per column)
    and product names or categories that held control characters; and how many products without a
    safe ``url`` got one from the link template."""

    unsafe_links: dict[str, int]
    example: str | None  # a product with an unsafe link
    cleaned_text: int
    templated_links: int = 0
    templated_example: str | None = None  # a link made from the template

    @property
    def message(self) -> str | None:
        """One line for the log or the console, or None when nothing was removed or templated."""
        parts, links = [], [f"{n:,} {column}" for column, n in self.unsafe_links.items() if n]
        if links:
            instead = ("link through the product_url template, or show their name in place of the image"
                       if self.templated_links else "get no link, or their name in place of the image")
            parts.append(f"{' and '.join(links)} value(s) are not absolute http(s) URLs and are left out "
                         f"(e.g. product {self.example!r}): such products {instead}")
        if self.templated_links:
            parts.append(f"{self.templated_links:,} product(s) without a safe url link through the product_url "
                         f"template (e.g. {self.templated_example})")
        if self.cleaned_text:
            parts.append(f"control characters removed from {self.cleaned_text:,} product name(s) or categories")
        return "catalog: " + "; ".join(parts) + "." if parts else None


def _sql_url(value: str | None) -> str | None:
    return safe_http_url(value)


def _sql_text(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def safe_catalog(tables: Tables, product_url: str | None = None) -> CatalogCheck:
    """Replace the products table (in memory) by one whose ``url`` and ``image_url`` are absolute
    http(s) URLs or NULL (:func:`features.links.safe_http_url`) and whose ``name`` and ``category``
    hold no control character; returns what was removed. With a link template ``product_url`` (one
    :func:`serving.product_block.check_product_url` accepted), a ``url`` that is missing or unsafe
    becomes the template's link of the product (:func:`serving.product_block.product_link`)."""
    con, products = tables.con, Table.PRODUCTS.value
    con.create_function("_sendwise_safe_url", _sql_url, ["VARCHAR"], "VARCHAR", null_handling="special")
    con.create_function("_sendwise_clean_text", _sql_text, ["VARCHAR"], "VARCHAR", null_handling="special")
    templated = "CAST(NULL AS VARCHAR)"
    if product_url is not None:
        con.create_function("_sendwise_product_link", lambda pid: product_link(product_url, pid), ["VARCHAR"],
                            "VARCHAR", null_handling="special")
        templated = f"_sendwise_product_link(CAST({PRODUCT_ID} AS VARCHAR))"
    given = "IS NOT NULL AND trim({0}) <> '' AND _sendwise_safe_url({0}) IS NULL"
    try:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _safe_products AS SELECT *,
                          {URL} {given.format(URL)} AS _bad_url, {IMAGE_URL} {given.format(IMAGE_URL)} AS _bad_image,
                          {NAME} IS DISTINCT FROM _sendwise_clean_text({NAME})
                            OR {CATEGORY} IS DISTINCT FROM _sendwise_clean_text({CATEGORY}) AS _dirty_text,
                          CASE WHEN _sendwise_safe_url({URL}) IS NULL THEN {templated} END AS _templated
                        FROM {products}""")
        counts = con.execute(f"""SELECT count(*) FILTER (WHERE _bad_url), count(*) FILTER (WHERE _bad_image),
                                        min({PRODUCT_ID}) FILTER (WHERE _bad_url OR _bad_image),
                                        count(*) FILTER (WHERE _dirty_text), count(_templated),
                                        arg_min(_templated, {PRODUCT_ID}) FILTER (WHERE _templated IS NOT NULL)
                                 FROM _safe_products""").fetchall()[0]
        con.execute(f"""UPDATE _safe_products SET {URL} = coalesce(_templated, _sendwise_safe_url({URL})),
                          {IMAGE_URL} = _sendwise_safe_url({IMAGE_URL}), {NAME} = _sendwise_clean_text({NAME}),
                          {CATEGORY} = _sendwise_clean_text({CATEGORY})""")
        is_view = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [products]).fetchall()[0][0]
        con.execute(f"DROP {'VIEW' if is_view else 'TABLE'} {products}")
        con.execute(f"CREATE TEMP VIEW {products} AS SELECT * EXCLUDE (_bad_url, _bad_image, _dirty_text, _templated) "
                    "FROM _safe_products")
    finally:
        con.remove_function("_sendwise_safe_url")
        con.remove_function("_sendwise_clean_text")
        if product_url is not None:
            con.remove_function("_sendwise_product_link")
    return CatalogCheck({URL: counts[0], IMAGE_URL: counts[1]}, clean_text(counts[2]) if counts[2] else None,
                        counts[3], counts[4], counts[5])


def load_states(config: ServeConfig, extra: list[Aliases] | tuple[Aliases, ...] = ()) -> dict[Aliases, ServingState]:
    """One state per alias set: the configured aliases and each of ``extra`` (e.g. an experiment
    variant serving the challenger). Data and snapshot are read once and shared."""
    if not config.data.is_dir():
        raise NotReadyError(f"data directory {config.data} does not exist; pass --data DIR with the shop's tables.")
    models = {aliases: load_champions(config, aliases) for aliases in dict.fromkeys([config_aliases(config), *extra])}
    tables, _ = load_data_dir(config.data, config.rejects_dir, timezone=config.timezone)
    check = safe_catalog(tables, config.product_url)
    if check.message:
        logger.warning(check.message)
    for warning in dict.fromkeys(w for m in models.values() for w in m.warnings):
        logger.warning(warning)
    feature_config = serving_feature_config([b for m in models.values() for b in (m.churn, m.propensity)])
    if config.snapshot is not None:
        if not config.snapshot.exists():
            raise NotReadyError(f"feature snapshot {config.snapshot} does not exist. Create it with "
                                f"`sendwise features snapshot --data {config.data} --out {config.snapshot}`.")
        features, meta = read_snapshot(config.snapshot)
        as_of = datetime.fromisoformat(meta["as_of"])
        check_snapshot(features, feature_config, config)
    else:
        as_of = snapshot_as_of(tables)
        features = build_features(tables, as_of, feature_config)
    current = current_attributes(tables)
    states = {}
    for aliases, m in models.items():
        context = RecommendationContext(tables, as_of, m.recommender)
        customers = CustomerTable(features, m.churn, m.propensity, current, feature_config)
        states[aliases] = ServingState(as_of, customers, m.churn, m.propensity, m.recommender, m.recommender_version,
                                       context, Lookup(context), m.provenance["recommender"], tables, features)
    return states


def check_snapshot(features: pd.DataFrame, feature_config: FeatureConfig, config: ServeConfig) -> None:
    """:class:`NotReadyError` when the snapshot lacks a signal of ``feature_config`` (it was built with
    other feature settings)."""
    missing = [c for c in signal_features(feature_config) if c not in features]
    if missing:
        raise NotReadyError(f"feature snapshot {config.snapshot} lacks the columns {', '.join(missing[:4])}: it was "
                            f"built with other feature settings than this service's ({CONFIG_ENV}). Rebuild it "
                            f"with `sendwise features snapshot --data {config.data} --out {config.snapshot}` "
                            "under the same settings.")


def serving_feature_config(bundles: list[ModelBundle]) -> FeatureConfig:
    """The feature settings of this service (:meth:`FeatureConfig.current`, which the policy's signals
    are checked against), when every model was trained with them; else :class:`NotReadyError`."""
    current = FeatureConfig.current()
    for bundle in bundles:
        if trained_feature_config(bundle.meta) != current:
            raise NotReadyError(
                f"the {bundle.target} model v{bundle.meta.get('version', '?')} was trained with other feature settings "
                f"(windows, weights) than this service's ({CONFIG_ENV}={os.environ.get(CONFIG_ENV, 'unset: defaults')}):"
                f" set {CONFIG_ENV} to the file it was trained with (its columns, and the policy's signals, depend "
                "on them), or retrain it.")
    return current
