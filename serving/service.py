"""The send-time service (BentoML): scores and product recommendations for the email renderer.

Start it with ``sendwise serve --data DIR`` (binds 127.0.0.1). Models, snapshot and catalog are
loaded in ``__init__`` (see :mod:`serving.state`), never at import. Every request passes
:mod:`serving.metrics` (bounded labels) and :mod:`serving.guard` (API key, known paths, body checked
against the route's request model, one batch at a time) before BentoML sees it.
"""

from __future__ import annotations

import atexit
import functools
import gc
import inspect
import os
import random
import typing
import uuid
from datetime import UTC, datetime

import bentoml
import numpy as np
import pandas as pd
from pydantic import BaseModel
from starlette.responses import Response

from features.links import safe_http_url
from features.schema import CATEGORY, IMAGE_URL, NAME, PRICE, URL
from serving.config import ServeConfig
from serving.consent import enforce_consent
from serving.experiment_config import ExperimentSet, load_experiments
from serving.exposures import ExposureLog
from serving.forgotten import ForgottenCustomers
from serving.guard import GuardMiddleware, endpoint_label
from serving.lookup import PRECOMPUTED_K
from serving.metrics import RequestMetrics
from serving.policy import SUPPRESS, Policy, decide
from serving.product_block import BlockItem, ProductBlock, clean_text, format_price, render_html, with_utm
from serving.schemas import (
    Item,
    ModelInfo,
    NextBestAction,
    NextBestActionBatch,
    NextBestActionBatchRequest,
    NextBestActionRequest,
    ProductBlockBatch,
    ProductBlockBatchRequest,
    ProductBlockRequest,
    Recommendations,
    RecommendationsBatch,
    RecommendBatchRequest,
    RecommendRequest,
    RuleOptions,
    Score,
    ScoreBatch,
    ScoreBatchRequest,
    ScoreRequest,
)
from serving.state import ServingState
from serving.variants import Arm, VariantRouter

# BentoML's TimeoutMiddleware schedules a timer per request that keeps the request's context, with its
# OpenTelemetry span (~4.6 kB in all), for traffic.timeout (60 s): under a flood of requests that is
# rate x 60 s of them. Without a tracing exporter the spans record nothing: don't make them (~0.9 kB
# then). OTEL_SDK_DISABLED=false keeps them for a shop that configures BentoML's tracing.
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

DEFAULT_RULES = RuleOptions()
THREADS = 4  # a batch holds one (one at a time, see serving.guard); single requests share the others


# BentoML's HTTP metrics are off: they label series by raw path (serving/metrics.py keeps the same
# series with bounded labels).
@bentoml.service(name="sendwise", workers=1, threads=THREADS, logging={"access": {"enabled": False}},
                 metrics={"enabled": False}, http={"host": "127.0.0.1"})
class Sendwise:
    def __init__(self) -> None:
        config = ServeConfig.from_env()
        self.policy = Policy.load(config.policy) if config.policy else Policy.load()
        experiments = load_experiments(config.experiments) if config.experiments else ExperimentSet()
        self.router = VariantRouter.load(config, experiments, self.policy, datetime.now(UTC).replace(tzinfo=None))
        self.state: ServingState = self.router.default.state
        self.forgotten = ForgottenCustomers(config.data)  # answered as unknown, logged without their id
        self.exposures = ExposureLog(config.exposure_log, config.exposure_fsync)
        self.currency = config.currency
        self.consent = config.consent
        self.rng = random.Random()
        # Everything loaded so far lives as long as the process: move it out of the collector's
        # sight, or each full collection rescans it (100+ ms pauses in a batch request).
        gc.freeze()
        atexit.register(gc.unfreeze)  # let it be freed normally at exit

    # scores -----------------------------------------------------------------------------------
    def _scores(self, customer_ids: list[str]) -> list[Score]:
        return [self._score(c, key) for c, key in zip(customer_ids, self.forgotten.mask(customer_ids), strict=True)]

    def _score(self, customer_id: str, key: str) -> Score:
        record = self.state.customers.scores(key)
        versions = {k: v for k, v in self.state.versions.items() if k != "recommender"}
        if record is None:
            return Score(customer_id=customer_id, known=False, lifecycle_stage="prospect",
                         reasons=["unknown customer: no history before the snapshot"], model_versions=versions)
        return Score(customer_id=customer_id, known=True, model_versions=versions, **record)

    @bentoml.api(route="/score")
    def score(self, request: ScoreRequest, /) -> Score:
        """Churn and purchase probabilities, risk band, segment, stage and reasons of one customer."""
        return self._scores([request.customer_id])[0]

    @bentoml.api(route="/score_batch")
    def score_batch(self, request: ScoreBatchRequest, /, ctx: bentoml.Context = None) -> ScoreBatch:
        """The same for up to 10,000 customers, as ``{"results": [...]}``."""
        return _answer(ScoreBatch.model_construct(results=self._scores(request.customer_ids)), ctx)

    # recommendations ---------------------------------------------------------------------------
    def _recommend(self, customer_ids: list[str], k: int, options: RuleOptions, log: bool = True,
                   state: ServingState | None = None) -> list[Recommendations]:
        """Precomputed lists for the default rules (k <= 20), the full rule engine otherwise.

        Responses are built with ``model_construct``: every field comes from typed arrays of our own,
        and validating thousands of nested objects per batch would double its latency."""
        state = state or self.state
        lookup, keys = state.lookup, self.forgotten.mask(customer_ids)
        if options == DEFAULT_RULES and k <= PRECOMPUTED_K:
            picks = {key: lookup.default_picks(key, k) for key in keys}
        else:  # the request model has checked the rules
            picks = lookup.frame_picks(state.recommendations.recommend(pd.Index(list(dict.fromkeys(keys))), k,
                                                                       options.rules()))
        catalog, product_ids = lookup.catalog, lookup.product_ids
        out = []
        for cid, key in zip(customer_ids, keys, strict=True):
            items = [Item.model_construct(rank=rank, product_id=product_ids[p.product], score=p.score, source=p.source,
                          name=catalog[NAME][p.product], category=catalog[CATEGORY][p.product],
                          price=catalog[PRICE][p.product], image_url=catalog[IMAGE_URL][p.product])
                     for rank, p in enumerate(picks.get(key, []), start=1)]
            out.append(Recommendations.model_construct(customer_id=cid, known=key in state.customers, items=items,
                                       model_version=state.recommender_version))
        if log:
            versions = {"recommender": state.recommender_version}
            self._log([_exposure(r.customer_id, "recommend", [i.product_id for i in r.items], 1.0, versions)
                       for r in out])
        return out

    def _log(self, exposures: list[dict]) -> str:
        """Append the exposures (see :func:`_exposure`) with one request id and time; returns the id.
        A forgotten customer is logged as ``forgotten``, never by their id."""
        stamp = {"request_id": uuid.uuid4().hex, "time": datetime.now(UTC).isoformat()}
        keys = self.forgotten.mask([e["customer_id"] for e in exposures])
        self.exposures.append([stamp | e | {"customer_id": key} for key, e in zip(keys, exposures, strict=True)])
        return stamp["request_id"]

    @bentoml.api(route="/recommend")
    def recommend(self, request: RecommendRequest, /) -> Recommendations:
        """Top-k products with score, source and catalog fields, after the business rules."""
        return self._recommend([request.customer_id], request.k, request.rules)[0]

    @bentoml.api(route="/recommend_batch")
    def recommend_batch(self, request: RecommendBatchRequest, /, ctx: bentoml.Context = None) -> RecommendationsBatch:
        """The same for up to 10,000 customers and 20,000 customers x k (campaign precompute), as
        ``{"results": [...]}``."""
        return _answer(RecommendationsBatch.model_construct(
            results=self._recommend(list(dict.fromkeys(request.customer_ids)), request.k, request.rules)), ctx)

    # product blocks and next best action ---------------------------------------------------------
    def _because(self, recs: Recommendations, state: ServingState) -> dict[str, str]:
        """product -> "Because you bought X" for the model's picks, X the customer's bought product
        most similar to the pick under the model."""
        lookup, model = state.lookup, state.recommender
        picks = [i.product_id for i in recs.items if i.source != "popular"]
        history = lookup.bought(recs.customer_id) if recs.known and picks else []
        if not len(history):
            return {}
        best = model.most_similar(np.array([lookup.column[p] for p in picks]), history)
        if best is None:
            return {}
        names = lookup.catalog[NAME]
        return {pick: f"Because you bought {names[history[b]] or lookup.product_ids[history[b]]}"
                for pick, b in zip(picks, best, strict=True)}

    def _blocks(self, recs: list[Recommendations], campaign: str, heading: str | None,
                state: ServingState | None = None) -> list[ProductBlock]:
        state = state or self.state
        lookup = state.lookup
        blocks = []
        heading = clean_text(heading).strip() or None
        for r in recs:
            because = self._because(r, state)
            # Every text is one clean line and every URL absolute http(s) or None, whatever the
            # catalog held (serving.state has cleaned it already; this holds for any state).
            items = [BlockItem.model_construct(product_id=i.product_id, name=clean_text(i.name or i.product_id),
                               price=clean_text(format_price(i.price, self.currency)) if i.price is not None else None,
                               image_url=safe_http_url(i.image_url),
                               link=with_utm(lookup.catalog[URL][lookup.column[i.product_id]], campaign),
                               reason=clean_text(because.get(
                                   i.product_id, "Popular right now" if i.source == "popular" else "Picked for you")))
                     for i in r.items]
            title = heading or ("Picked for you" if r.known else "Popular right now")
            blocks.append(ProductBlock.model_construct(customer_id=r.customer_id, known=r.known, heading=title, items=items,
                                       html=render_html(title, items), model_version=r.model_version))
        return blocks

    def _product_blocks(self, customer_ids: list[str], k: int, options: RuleOptions, campaign: str,
                        heading: str | None) -> list[ProductBlock]:
        blocks = self._blocks(self._recommend(customer_ids, k, options, log=False), campaign, heading)
        versions = {"recommender": self.state.recommender_version}
        self._log([_exposure(b.customer_id, "product_block", [i.product_id for i in b.items], 1.0, versions)
                   for b in blocks])
        return blocks

    @bentoml.api(route="/product_block")
    def product_block(self, request: ProductBlockRequest, /) -> ProductBlock:
        """Everything an email needs to show recommended products, with an email-safe HTML fragment."""
        return self._product_blocks([request.customer_id], request.k, request.rules, request.campaign,
                                    request.heading)[0]

    @bentoml.api(route="/product_block_batch")
    def product_block_batch(self, request: ProductBlockBatchRequest, /, ctx: bentoml.Context = None) -> ProductBlockBatch:
        """The same for up to 10,000 customers and 20,000 customers x k, as ``{"results": [...]}``."""
        return _answer(ProductBlockBatch.model_construct(results=self._product_blocks(
            list(dict.fromkeys(request.customer_ids)), request.k, request.rules, request.campaign, request.heading)),
            ctx)

    def _next_best_actions(self, customer_ids: list[str], k: int, campaign: str) -> list[NextBestAction]:
        """Decide per customer with their arm's policy and models (the running experiment's variant,
        else the defaults); one exposure record per customer, logged before answering."""
        arms = self.router.route(customer_ids, datetime.now(UTC).replace(tzinfo=None))
        groups: dict[int, tuple[Arm, list[int]]] = {}
        for i, arm in enumerate(arms):
            groups.setdefault(id(arm), (arm, []))[1].append(i)
        decided: dict[int, tuple[NextBestAction, dict]] = {}
        for arm, rows in groups.values():
            decided.update(zip(rows, self._decide(arm, [customer_ids[i] for i in rows], k, campaign), strict=True))
        answers, exposures = zip(*(decided[i] for i in range(len(customer_ids))), strict=True)
        request_id = self._log(list(exposures))
        for answer in answers:
            answer.request_id = request_id
        return list(answers)

    def _decide(self, arm: Arm, customer_ids: list[str], k: int, campaign: str) -> list[tuple[NextBestAction, dict]]:
        """(answer, exposure record) per customer of one arm."""
        state, keys = arm.state, self.forgotten.mask(customer_ids)
        signals = [state.customers.signals(key) for key in keys]
        # Consent is checked last, after the policy, exploration and the experiment: whatever they
        # say, a customer without consent on record, or unsubscribed, gets "suppress".
        decisions = [enforce_consent(decide(arm.policy, s, self.rng), s, self.consent) for s in signals]
        wanted = [c for c, d in zip(customer_ids, decisions, strict=True) if "product_block" in d.content_blocks]
        blocks = {b.customer_id: b for b in self._blocks(self._recommend(wanted, k, RuleOptions(), log=False, state=state),
                                                         campaign, None, state)} if wanted else {}
        versions = state.versions
        out = []
        for c, key, d in zip(customer_ids, keys, decisions, strict=True):
            block = blocks.get(c)
            fields = d.model_dump()
            if arm.content_block and d.action != SUPPRESS:
                fields["content_blocks"] = [arm.content_block, *fields["content_blocks"]]
            answer = NextBestAction.model_construct(
                customer_id=c, known=key in state.customers, request_id="", product_block=block, model_versions=versions,
                experiment=arm.experiment, variant=arm.variant,
                subject_line=arm.subject_line if d.action != SUPPRESS else None,
                score_reasons=(state.customers.scores(key) or {}).get("reasons", []), **fields)
            out.append((answer, _exposure(c, d.action, [i.product_id for i in block.items] if block else [],
                                          d.probability, versions, arm.experiment, arm.variant)))
        return out

    @bentoml.api(route="/next_best_action")
    def next_best_action(self, request: NextBestActionRequest, /) -> NextBestAction:
        """The action the policy (serving/policy.yaml) picks, with offer, content blocks, product
        block, reasons, model versions and the probability of the pick."""
        return self._next_best_actions([request.customer_id], request.k, request.campaign)[0]

    @bentoml.api(route="/next_best_action_batch")
    def next_best_action_batch(self, request: NextBestActionBatchRequest, /,
                               ctx: bentoml.Context = None) -> NextBestActionBatch:
        """The same for up to 10,000 customers and 20,000 customers x k (campaign precompute), as
        ``{"results": [...]}``."""
        return _answer(NextBestActionBatch.model_construct(results=self._next_best_actions(
            list(dict.fromkeys(request.customer_ids)), request.k, request.campaign)), ctx)

    @bentoml.api(route="/ping")
    def ping(self) -> dict:
        """A trivial endpoint: the latency floor of this service, for benchmarks."""
        return {"ok": True}

    @bentoml.api(route="/model_info")
    def model_info(self) -> ModelInfo:
        """Versions, training dates and headline holdout metrics of the loaded models."""
        models = {}
        for name, bundle in (("churn", self.state.churn), ("propensity", self.state.propensity)):
            meta = bundle.meta
            models[name] = {"version": str(meta.get("version")), "trained_as_of": meta.get("trained_as_of"),
                            "holdout_roc_auc": (meta.get("holdout_metrics") or {}).get("roc_auc")}
        models["recommender"] = {"version": self.state.recommender_version, "kind": self.state.recommender.kind}
        running = self.router.experiments.running(datetime.now(UTC).replace(tzinfo=None))
        return ModelInfo(snapshot_as_of=self.state.as_of.isoformat(), customers=len(self.state.customers),
                         products=len(self.state.recommendations.products), models=models,
                         experiment=running.name if running else None)


def _answer(batch: BaseModel, ctx: bentoml.Context | None) -> BaseModel | Response:
    """A batch's answer: the model itself when called in process (``ctx`` None); over HTTP, its JSON
    already, made here in the worker's thread one result at a time. BentoML would serialise it in one
    call on the event loop, and pydantic holds the interpreter for the whole of it: 20 MB (a maximal
    batch) stopped every other request for 0.1-0.2 s."""
    if ctx is None:
        return batch
    results = b",".join(r.model_dump_json().encode() for r in batch.results)
    return Response(b'{"results":[' + results + b"]}", media_type="application/json")


def _exposure(customer_id: str, action: str, products: list[str], probability: float, versions: dict[str, str],
              experiment: str | None = None, variant: str | None = None) -> dict:
    """One exposure record: the customer id and the decision, no other personal data."""
    return {"customer_id": customer_id, "action": action, "products": products, "experiment": experiment,
            "variant": variant, "probability": probability, "model_versions": versions}


def _request_models(service: bentoml.Service) -> dict[str, type | None]:
    """Each API route and the model its body must match (None for a route without a body)."""
    models = {}
    for method in service.apis.values():
        params = [p for p in inspect.signature(method.func).parameters.values() if p.name not in ("self", method.ctx_param)]
        models[method.route] = typing.get_type_hints(method.func)[params[0].name] if params else None
    return models


def _api_key() -> str | None:
    key = ServeConfig.from_env().api_key
    return key.get_secret_value() if key else None


ROUTES = _request_models(Sendwise)
Sendwise.add_asgi_middleware(RequestMetrics, endpoint=functools.partial(endpoint_label, api_routes=ROUTES))
Sendwise.add_asgi_middleware(GuardMiddleware, routes=ROUTES,
                             batch_routes=frozenset(r for r in ROUTES if r.endswith("_batch")), api_key=_api_key)
