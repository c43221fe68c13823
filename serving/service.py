"""The send-time service (BentoML): scores and product recommendations for the email renderer.

Start it with ``sendwise serve --data DIR`` (binds 127.0.0.1). Models, snapshot and catalog are
loaded in ``__init__`` (see :mod:`serving.state`), never at import.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import bentoml
import pandas as pd
from bentoml.exceptions import InvalidArgument
from starlette.responses import JSONResponse

from features.schema import CATEGORY, CUSTOMER_ID, IMAGE_URL, NAME, PRICE, PRODUCT_ID
from serving.config import ServeConfig
from serving.exposures import ExposureLog
from serving.schemas import (
    Item,
    ModelInfo,
    Recommendations,
    RecommendBatchRequest,
    RecommendRequest,
    RuleOptions,
    Score,
    ScoreBatchRequest,
    ScoreRequest,
)
from serving.state import load_state
from training.recommenders.metrics import RANK, SCORE, SOURCE

MAX_BODY_BYTES = 2_000_000  # a 10,000-customer batch is about 200 kB
OPEN_PATHS = ("/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/")


class GuardMiddleware:
    """Bounds the body size (413) and, when ``SENDWISE_API_KEY`` is set, requires header
    ``x-api-key`` with that value on every API route (401)."""

    def __init__(self, app) -> None:
        self.app = app
        self.api_key = os.environ.get("SENDWISE_API_KEY") or None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and headers.get(b"x-api-key", b"").decode() != self.api_key:
            return await JSONResponse({"error": "missing or wrong x-api-key header"}, 401)(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and int(length) > MAX_BODY_BYTES:
            return await JSONResponse({"error": f"body larger than {MAX_BODY_BYTES} bytes"}, 413)(scope, receive, send)
        return await self.app(scope, receive, send)


@bentoml.service(name="sendwise", workers=1, logging={"access": {"enabled": False}}, http={"host": "127.0.0.1"})
class Sendwise:
    def __init__(self) -> None:
        config = ServeConfig.from_env()
        self.state = load_state(config)
        self.exposures = ExposureLog(config.exposure_log)

    # scores -----------------------------------------------------------------------------------
    def _score(self, customer_id: str) -> Score:
        record = self.state.scores.get(customer_id)
        versions = {k: v for k, v in self.state.versions.items() if k != "recommender"}
        if record is None:
            return Score(customer_id=customer_id, known=False, lifecycle_stage="prospect",
                         reasons=["unknown customer: no history before the snapshot"], model_versions=versions)
        return Score(customer_id=customer_id, known=True, model_versions=versions, **record)

    @bentoml.api(route="/score")
    def score(self, request: ScoreRequest, /) -> Score:
        """Churn and purchase probabilities, risk band, segment, stage and reasons of one customer."""
        return self._score(request.customer_id)

    @bentoml.api(route="/score_batch")
    def score_batch(self, request: ScoreBatchRequest, /) -> list[Score]:
        """The same for up to 10,000 customers."""
        return [self._score(c) for c in request.customer_ids]

    # recommendations ---------------------------------------------------------------------------
    def _recommend(self, customer_ids: list[str], k: int, options: RuleOptions) -> list[Recommendations]:
        try:
            rules = options.rules()
        except ValueError as exc:
            raise InvalidArgument(f"rules: {exc}") from exc
        recs = self.state.recommendations.recommend(pd.Index(customer_ids), k, rules)
        products = self.state.recommendations.products
        details = products.reindex(recs[PRODUCT_ID].to_numpy())
        recs = recs.assign(**{c: details[c].to_numpy() for c in (NAME, CATEGORY, PRICE, IMAGE_URL)})
        recs = recs.astype(object).where(recs.notna(), None)
        known = set(self.state.scores)
        by_customer = {cid: group for cid, group in recs.groupby(CUSTOMER_ID, sort=False)}
        out = []
        for cid in customer_ids:
            group = by_customer.get(cid)
            items = [] if group is None else [
                Item(rank=r[RANK], product_id=r[PRODUCT_ID], score=float(r[SCORE]), source=r[SOURCE], name=r[NAME],
                     category=r[CATEGORY], price=None if r[PRICE] is None else float(r[PRICE]), image_url=r[IMAGE_URL])
                for r in group.to_dict("records")]
            out.append(Recommendations(customer_id=cid, known=cid in known, items=items,
                                       model_version=self.state.recommender_version))
        self._log(out)
        return out

    def _log(self, results: list[Recommendations]) -> None:
        now, request_id = datetime.now(UTC).isoformat(), uuid.uuid4().hex
        self.exposures.append([
            {"request_id": request_id, "time": now, "customer_id": r.customer_id, "action": "recommend",
             "products": [i.product_id for i in r.items], "variant": None, "probability": 1.0,
             "model_versions": {"recommender": r.model_version}} for r in results])

    @bentoml.api(route="/recommend")
    def recommend(self, request: RecommendRequest, /) -> Recommendations:
        """Top-k products with score, source and catalog fields, after the business rules."""
        return self._recommend([request.customer_id], request.k, request.rules)[0]

    @bentoml.api(route="/recommend_batch")
    def recommend_batch(self, request: RecommendBatchRequest, /) -> list[Recommendations]:
        """The same for up to 10,000 customers (campaign precompute)."""
        return self._recommend(list(dict.fromkeys(request.customer_ids)), request.k, request.rules)

    @bentoml.api(route="/model_info")
    def model_info(self) -> ModelInfo:
        """Versions, training dates and headline holdout metrics of the loaded models."""
        models = {}
        for name, bundle in (("churn", self.state.churn), ("propensity", self.state.propensity)):
            meta = bundle.meta
            models[name] = {"version": str(meta.get("version")), "trained_as_of": meta.get("trained_as_of"),
                            "holdout_roc_auc": (meta.get("holdout_metrics") or {}).get("roc_auc")}
        models["recommender"] = {"version": self.state.recommender_version, "kind": self.state.recommender.kind}
        return ModelInfo(snapshot_as_of=self.state.as_of.isoformat(), customers=len(self.state.scores),
                         products=len(self.state.recommendations.products), models=models)


Sendwise.add_asgi_middleware(GuardMiddleware)
