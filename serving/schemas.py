"""Request and response models of the service (pydantic; examples appear in the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from serving.product_block import ProductBlock
from training.recommenders.batch import MAX_K
from training.recommenders.rules import BusinessRules

MAX_BATCH = 10_000
CustomerId = Field(..., min_length=1, max_length=200, examples=["17850"])
CustomerIdText = Annotated[str, StringConstraints(min_length=1, max_length=200)]  # the same, inside a batch


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str = CustomerId


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

    def rules(self) -> BusinessRules:
        return BusinessRules(exclude_purchased=not self.include_purchased,
                             repurchase_after_days=self.repurchase_after_days, require_image=self.require_image,
                             categories=tuple(self.categories), exclude_categories=tuple(self.exclude_categories),
                             min_price=self.min_price, max_price=self.max_price,
                             max_per_category=self.max_per_category)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str = CustomerId
    k: int = Field(10, ge=1, le=MAX_K)
    rules: RuleOptions = Field(default_factory=RuleOptions)


class RecommendBatchRequest(BaseModel):
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


class ModelInfo(BaseModel):
    snapshot_as_of: str
    customers: int
    products: int
    models: dict[str, dict]
    experiment: str | None = Field(None, description="the experiment running now, if any")


Campaign = Field("sendwise", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$", examples=["spring_sale"])


class ProductBlockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str = CustomerId
    k: int = Field(4, ge=1, le=MAX_K)
    campaign: str = Campaign
    heading: str | None = Field(None, max_length=200)
    rules: RuleOptions = Field(default_factory=RuleOptions)


class ProductBlockBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_ids: list[CustomerIdText] = Field(..., min_length=1, max_length=MAX_BATCH)
    k: int = Field(4, ge=1, le=MAX_K)
    campaign: str = Campaign
    heading: str | None = Field(None, max_length=200)
    rules: RuleOptions = Field(default_factory=RuleOptions)


class NextBestActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str = CustomerId
    k: int = Field(4, ge=1, le=MAX_K, description="products in the product block")
    campaign: str = Campaign


class NextBestActionBatchRequest(BaseModel):
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
