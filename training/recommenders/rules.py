"""Business rules applied to recommendations: what a customer may be shown.

Catalog rules block a product for everybody (out of stock, no image, category, price). A product
that is ordered but missing from the catalog has no stock flag (kept), no image (blocked when an
image is required), no category (blocked when categories are listed) and no price (blocked when a
price bound is set). Purchase rules exclude per customer: what they already bought, or, with
``repurchase_after_days``, what they bought within that many days (so consumables come back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.errors import InputError
from features.schema import CATEGORY, IMAGE_URL, IN_STOCK, PRICE, PRODUCT_ID, Table
from features.tables import Tables

if TYPE_CHECKING:
    from features.spark import SparkTables


class BusinessRules(BaseModel):
    """Filters and diversity applied by ``sendwise recommend`` and the service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exclude_purchased: bool = True
    repurchase_after_days: int | None = Field(None, ge=1, le=3650)  # None: never show a bought product again
    exclude_out_of_stock: bool = True
    require_image: bool = False
    categories: tuple[str, ...] = ()  # only these categories (empty: any)
    exclude_categories: tuple[str, ...] = ()
    min_price: float | None = Field(None, ge=0)
    max_price: float | None = Field(None, ge=0)
    max_per_category: int | None = Field(None, ge=1)  # diversity: at most this many per category

    @model_validator(mode="after")
    def _price_range(self) -> BusinessRules:
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise InputError(f"min_price ({self.min_price}) must not exceed max_price ({self.max_price})")
        return self


def catalog(tables: Tables | SparkTables, product_ids: pd.Index) -> pd.DataFrame:
    """The products table (of either engine) indexed by ``product_ids`` (missing products: all-null rows)."""
    products = tables.query(f"SELECT * FROM {Table.PRODUCTS.value}").drop_duplicates(PRODUCT_ID)
    return products.set_index(PRODUCT_ID).reindex(product_ids)


def blocked_products(products: pd.DataFrame, rules: BusinessRules) -> np.ndarray:
    """Positions in ``products`` (from :func:`catalog`) that the catalog rules block."""
    blocked = np.zeros(len(products), bool)
    if rules.exclude_out_of_stock:
        blocked |= products[IN_STOCK].eq(False).to_numpy(bool, na_value=False)
    if rules.require_image:
        image = products[IMAGE_URL].astype("string").str.strip()
        blocked |= image.isna().to_numpy() | image.eq("").to_numpy(bool, na_value=True)
    category = products[CATEGORY].astype("string")
    if rules.categories:
        blocked |= ~category.isin(rules.categories).to_numpy(bool, na_value=False)
    if rules.exclude_categories:
        blocked |= category.isin(rules.exclude_categories).to_numpy(bool, na_value=False)
    price = pd.to_numeric(products[PRICE], errors="coerce")
    if rules.min_price is not None:
        blocked |= ~(price >= rules.min_price).to_numpy(bool, na_value=False)
    if rules.max_price is not None:
        blocked |= ~(price <= rules.max_price).to_numpy(bool, na_value=False)
    return np.flatnonzero(blocked)
