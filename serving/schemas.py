"""Request and response models of the service (pydantic; examples appear in the OpenAPI document).

The request models are the whole contract of a request: :mod:`serving.guard` checks every body
against them before the service sees it, so what they refuse is a 4xx naming the field.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from serving.product_block import ProductBlock
from training.recommenders.batch import MAX_K
from training.recommenders.rules import BusinessRules

MAX_BATCH = 10_000
# Work per request: customers x k of a batch that answers products (recommendations, product blocks,
# next best actions). A product-block item is about 1 kB of JSON and HTML, so the largest answer is
# about 20 MB (5,000 customers at the default k=4, 200 at k=100).
MAX_ITEMS = 20_000
WORK_LIMIT = "work_limit"  # the error type of a request over MAX_ITEMS (answered 422)


NO_CONTROLS = r"^[^\x00-\x1f\x7f-\x9f]*$"  # an id is echoed in every answer and block: refused, not altered


def _integer_as_text(value: object) -> object:
    """An integer id (``17850``, what Online Retail ids look like) is read as its decimal text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


CustomerIdText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_CONTROLS),
                           BeforeValidator(_integer_as_text)]
CustomerId = Field(..., examples=["17850"], description="1-200 characters, no control character; an integer is "
                   "read as its decimal text")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerIdText = CustomerId


class ScoreBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_ids: list[CustomerIdText] = Field(..., min_length=1, max_length=MAX_BATCH, examples=[["17850", "13047"]])


class Score(BaseModel):
    customer_id: str
    known: bool = Field(description="false: no history before the snapshot; a cold-start answer")
    churn_probability: float | None = Field(None, description="within the churn model's horizon; none for prospects")
    purchase_probability: float | None = None
    churn_risk: str | None = Field(None, description="low < 0.3 <= medium < 0.6 <= high")
    rfm_segment: str | None = None
    lifecycle_stage: str | None = None
    expected_orders: float | None = Field(None, description="orders expected over the CLV horizon (the churn "
                                          "model's CLV fit: BG/NBD); none for prospects")
    predicted_clv: float | None = Field(None, description="spend expected over the CLV horizon, undiscounted, in "
                                        "the shop's currency (BG/NBD x Gamma-Gamma)")
    p_alive: float | None = Field(None, description="probability the customer is still a customer (BG/NBD)")
    next_order_date: date | None = Field(None, description="the day the expected orders reach one; none when under "
                                         "one order is expected within the horizon")
    reasons: list[str] = Field(default_factory=list, examples=[["no order for 142 days"]])
    model_versions: dict[str, str]


class RuleOptions(BaseModel):
    """Business rules a request may set (the defaults: purchased and out-of-stock products excluded)."""

    model_config = ConfigDict(extra="forbid")
    include_purchased: bool = False
    repurchase_after_days: int | None = Field(None, ge=1, le=3650)
    require_image: bool = False
    categories: list[str] = Field(default_factory=list)
    exclude_categories: list[str] = Field(default_factory=list)
    min_price: float | None = Field(None, ge=0)
    max_price: float | None = Field(None, ge=0)
    max_per_category: int | None = Field(None, ge=1, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> RuleOptions:
        self.rules()  # a price range the wrong way round fails here, naming both bounds
        return self

    def rules(self) -> BusinessRules:
        return BusinessRules(exclude_purchased=not self.include_purchased,
                             repurchase_after_days=self.repurchase_after_days, require_image=self.require_image,
                             categories=tuple(self.categories), exclude_categories=tuple(self.exclude_categories),
                             min_price=self.min_price, max_price=self.max_price,
                             max_per_category=self.max_per_category)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerIdText = CustomerId
    k: int = Field(10, ge=1, le=MAX_K)
    rules: RuleOptions = Field(default_factory=RuleOptions)


class _BoundedWork(BaseModel):
    """A batch whose answer holds up to ``k`` products per customer: ``customers x k`` is bounded."""

    @model_validator(mode="after")
    def _work(self) -> _BoundedWork:
        customers, k = len(set(self.customer_ids)), self.k
        if customers * k > MAX_ITEMS:
            raise PydanticCustomError(
                WORK_LIMIT, "{customers} distinct customers x k={k} is {items} products; a request may ask for at "
                "most {limit} (customers x k): split the batch into requests of at most {most} customers at this k",
                {"customers": customers, "k": k, "items": customers * k, "limit": MAX_ITEMS, "most": MAX_ITEMS // k})
        return self


class RecommendBatchRequest(_BoundedWork):
    model_config = ConfigDict(extra="forbid")
    customer_ids: list[CustomerIdText] = Field(..., min_length=1, max_length=MAX_BATCH, examples=[["17850", "13047"]])
    k: int = Field(10, ge=1, le=MAX_K)
    rules: RuleOptions = Field(default_factory=RuleOptions)


class Item(BaseModel):
    rank: int
    product_id: str
    score: float
    source: str = Field(description="model, similar-to or popular")
    name: str | None = None
    category: str | None = None
    price: float | None = None
    image_url: str | None = None


class Recommendations(BaseModel):
    customer_id: str
    known: bool
    items: list[Item]
    model_version: str


class LoadedModel(BaseModel):
    """A loaded model version and where it comes from (its registry tags)."""

    version: str
    project: str | None = Field(None, description="the project it was registered for; null: none")
    data_fingerprint: str | None = Field(None, description="fingerprint of the rows its training read")
    trained_through: str | None = Field(None, description="ISO 8601: the latest timestamp among those rows",
                                        examples=["2025-09-30T21:14:00"])


class LoadedClassifier(LoadedModel):
    trained_as_of: str | None = None
    holdout_roc_auc: float | None = None


class LoadedRecommender(LoadedModel):
    kind: str = Field(examples=["als"])


class LoadedModels(BaseModel):
    churn: LoadedClassifier
    propensity: LoadedClassifier
    recommender: LoadedRecommender


class ModelInfo(BaseModel):
    snapshot_as_of: str
    customers: int
    products: int
    models: LoadedModels
    experiment: str | None = Field(None, description="the experiment running now, if any")
    loaded_at: str | None = Field(None, description="when the models and snapshot in use were loaded (UTC, ISO 8601): "
                                  "at startup, or at the last live reload", examples=["2025-10-01T06:00:12"])
    now: str | None = Field(None, description="the service's clock (UTC, ISO 8601) that events and windows use: the "
                            "wall clock, or the data's end plus the time since the start", examples=["2011-12-09T13:02:41"])
    clock: str | None = Field(None, description="how the clock runs: wall or data", examples=["data"])
    worker: int | None = Field(None, description="the process id of the worker that answered (one of "
                               "SENDWISE_WORKERS)", examples=[4242])


class EventsRequest(BaseModel):
    """``POST /events``: a batch of events, all accepted or none (see :mod:`features.event_log` for each event's fields)."""

    model_config = ConfigDict(extra="forbid")
    events: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_BATCH, examples=[[
        {"event_id": "e-1001", "customer_id": "17850", "event_type": "add_to_cart", "occurred_at":
         "2011-12-09T13:00:00Z", "product_id": "85123A"},
        {"event_id": "o-536365", "customer_id": "17850", "event_type": "order", "occurred_at": "2011-12-09T13:05:00Z",
         "lines": [{"product_id": "85123A", "quantity": 6, "unit_price": 2.55}]}]])


class SegmentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerIdText = CustomerId


class SegmentMembership(BaseModel):
    customer_id: str
    known: bool = Field(description="false for a customer the service has no row or event of (or forgot)")
    segments: list[str] = Field(description="the names of the segments the customer is in now, sorted")


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events new to the service, durably logged and applied")
    duplicates: list[str] = Field(description="event ids seen before (or repeated in the batch): acknowledged, ignored")
    forgotten: int = Field(0, description="events of forgotten customers: acknowledged, not kept")
    now: str = Field(description="the service's clock when they were applied")


Campaign = Field("sendwise", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$", examples=["spring_sale"])


class ProductBlockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerIdText = CustomerId
    k: int = Field(4, ge=1, le=MAX_K)
    campaign: str = Campaign
    heading: str | None = Field(None, max_length=200)
    rules: RuleOptions = Field(default_factory=RuleOptions)


class ProductBlockBatchRequest(_BoundedWork):
    model_config = ConfigDict(extra="forbid")
    customer_ids: list[CustomerIdText] = Field(..., min_length=1, max_length=MAX_BATCH)
    k: int = Field(4, ge=1, le=MAX_K)
    campaign: str = Campaign
    heading: str | None = Field(None, max_length=200)
    rules: RuleOptions = Field(default_factory=RuleOptions)


class NextBestActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerIdText = CustomerId
    k: int = Field(4, ge=1, le=MAX_K, description="products in the product block")
    campaign: str = Campaign


class NextBestActionBatchRequest(_BoundedWork):
    model_config = ConfigDict(extra="forbid")
    customer_ids: list[CustomerIdText] = Field(..., min_length=1, max_length=MAX_BATCH)
    k: int = Field(4, ge=1, le=MAX_K)
    campaign: str = Campaign


class NextBestAction(BaseModel):
    customer_id: str
    known: bool
    request_id: str
    action: str = Field(examples=["winback"])
    offer: str
    content_blocks: list[str]
    product_block: ProductBlock | None
    reasons: list[str] = Field(description="the policy conditions that chose the action")
    score_reasons: list[str] = Field(description="the churn / propensity model's reason codes")
    model_versions: dict[str, str]
    experiment: str | None = Field(None, description="the running experiment, if any")
    variant: str | None = Field(None, description="the customer's variant of that experiment")
    subject_line: str | None = Field(None, description="the variant's subject line, when it sets one")
    probability: float
    explored: bool


class ScoreBatch(BaseModel):
    """Batch responses wrap the list: one JSON object, serialised in one pass."""
    results: list[Score]


class RecommendationsBatch(BaseModel):
    results: list[Recommendations]


class ProductBlockBatch(BaseModel):
    results: list[ProductBlock]


class NextBestActionBatch(BaseModel):
    results: list[NextBestAction]
