"""How high can churn ROC-AUC go on the Online Retail protocol? An upper bound, measured.

Issue 3's protocol: churn within 90 days, scored at as_of 2011-09-10 from rows before it (3,368
customers). This script fits XGBoost over a grid (depth 1-4, 200/500/1,000 rounds at eta 0.03) and
reports, for each way of fitting, the BEST holdout ROC-AUC over the grid, i.e. with the grid point
picked on the holdout itself, which is optimistic on purpose (the JSON also keeps the grid's median):

* ``time split``: fitted on the stacked earlier as_of dates only (what the product does);
* ``in-distribution``: 5-fold cross-validation on the holdout customers themselves, features at
  2011-09-10 and labels from its window (the model sees the very distribution it is scored on);
* ``in-distribution + history``: the same folds, with every earlier training row added (rows of the
  test fold's customers left out), the holdout rows weighted 10 to 1.

The second feature set adds the customer's country (one-hot, 10 most common) and a 16-dimensional
SVD embedding of the products they bought before 2011-09-10 (a product-taste signal the product's
features lack), measured in-distribution.

The third adds repurchase cycles (issue 17), computed for every row from the order lines before
its own as_of (the training as_of dates and the holdout's alike), measured in the same three ways
on the same grid:

* per customer, over the products (and separately the product kinds) they bought on at least 2
  distinct days: how many and what share of their products; the median and min of the item's
  own median gap between purchase days; days since they last bought such an item; overdue ratio
  (days since the item's last purchase / its gap), min and median; how many are due (ratio > 1);
* shop level, from every customer's rows before the as_of: each product's cycle (median gap
  between purchase days, products with at least 5 gaps) and the customer's days since their last
  purchase day over the cycles of that day's products (min, median); each product's re-buy rate
  (share of its buyers, at least 5, who bought it on 2 days or more), the mean over the customer's
  products and the share of their products whose rate is above the median product's.

Online Retail's catalog has no category (``top_category`` is empty there), so a product's kind is
a proxy: the last word of its name that is not a colour, size or pattern (``HOLDER``, ``MUG``),
plural folded.

    python benchmarks/churn_ceiling.py

Writes benchmarks/results/churn_ceiling.json and prints a table.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from itertools import product
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pandas as pd
import xgboost as xgb
from rich.console import Console
from rich.table import Table
from scipy.sparse import csr_matrix
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir
from features.schema import AS_OF as AS_OF_COLUMN
from features.schema import COUNTRY, CUSTOMER_ID, NAME, ORDERED_AT, PRODUCT_ID, QUANTITY
from features.tables import Tables
from features.training_set import Target
from training.design import design_matrix, feature_columns
from training.linear import LogRFMModel
from training.train import make_folds
from training.tuning import BASE_PARAMS

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
AS_OF, HORIZON, LABEL = pd.Timestamp("2011-09-10"), 90, Target.CHURNED.value
GRID = list(product((1, 2, 3, 4), (200, 500, 1000)))  # (max_depth, rounds)
HOLDOUT_WEIGHT = 10.0
SHOP_MIN = 5  # buyers (re-buy rate) or gaps (cycle) a product needs before its shop-level figure counts
NOT_A_KIND = frozenset(("PINK", "RED", "BLUE", "GREEN", "WHITE", "BLACK", "IVORY", "CREAM", "GOLD", "SILVER",
                        "PURPLE", "ORANGE", "YELLOW", "LARGE", "SMALL", "MINI", "JUMBO", "ASSORTED", "DESIGN",
                        "DESIGNS", "RETROSPOT", "POLKADOT", "VINTAGE", "COLOUR", "COLOURS", "SET", "AND", "WITH"))


def taste_features(tables: Tables, customers: pd.Series, as_of: pd.Timestamp) -> pd.DataFrame:
    """Country one-hot and a 16-d SVD embedding of the products each customer bought before as_of."""
    bought = tables.con.execute(
        f"SELECT {CUSTOMER_ID}, {PRODUCT_ID}, count(*) AS n FROM orders "
        f"WHERE {ORDERED_AT} < $as_of AND {QUANTITY} > 0 GROUP BY ALL", {"as_of": as_of}).df()
    row = {c: i for i, c in enumerate(customers)}
    bought = bought[bought[CUSTOMER_ID].isin(row)]
    column = {p: i for i, p in enumerate(bought[PRODUCT_ID].unique())}
    matrix = csr_matrix((np.log1p(bought["n"].to_numpy(float)),
                         (bought[CUSTOMER_ID].map(row), bought[PRODUCT_ID].map(column))),
                        shape=(len(row), len(column)))
    embedding = TruncatedSVD(16, random_state=0).fit_transform(matrix)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True) + 1e-9
    out = pd.DataFrame(embedding, columns=[f"taste_{k}" for k in range(16)], index=customers.index)
    country = customers.map(tables.frame("customers").set_index(CUSTOMER_ID)[COUNTRY])
    for name in country.value_counts().index[:10]:
        out[f"country={name}"] = (country == name).astype(float)
    return out


def product_kinds(products: pd.DataFrame) -> pd.Series:
    """A category proxy per product id: the last word of its name (3+ letters) that is not in NOT_A_KIND,
    a trailing S dropped."""
    words = products[NAME].fillna("").str.upper().str.replace(r"[^A-Z ]", " ", regex=True).str.split()
    kind = words.map(lambda w: next((x for x in reversed(w) if x not in NOT_A_KIND and len(x) > 2), None))
    return kind.str.replace(r"(?<=...)S$", "", regex=True).set_axis(products[PRODUCT_ID])


def _items(days: pd.DataFrame, key: str, as_of: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (customer, ``key``): purchase days, last day, median gap, days since, overdue ratio; and
    the distinct purchase days with their gap to the previous one."""
    days = days[[CUSTOMER_ID, key, "day"]].drop_duplicates().sort_values([CUSTOMER_ID, key, "day"])
    days["gap"] = days.groupby([CUSTOMER_ID, key])["day"].diff().dt.days
    items = days.groupby([CUSTOMER_ID, key]).agg(n_days=("day", "size"), last=("day", "max"),
                                                 interval=("gap", "median"))
    items["since"] = (as_of - items["last"]).dt.days
    items["overdue"] = items["since"] / items["interval"]
    items["due"] = (items["overdue"] > 1).astype(float)
    return items, days


def _own_cycles(items: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The customer's own repurchase cycles over the items they bought on 2 days or more."""
    bought = items.groupby(level=CUSTOMER_ID).size()
    repeat = items[items["n_days"] >= 2].groupby(level=CUSTOMER_ID)
    out = pd.DataFrame({f"{prefix}_repeat_n": repeat.size(), f"{prefix}_repeat_share": repeat.size() / bought,
                        f"{prefix}_interval_median": repeat["interval"].median(),
                        f"{prefix}_interval_min": repeat["interval"].min(),
                        f"{prefix}_since_repeat": repeat["since"].min(),
                        f"{prefix}_overdue_min": repeat["overdue"].min(),
                        f"{prefix}_overdue_median": repeat["overdue"].median(),
                        f"{prefix}_due_n": repeat["due"].sum()}, index=bought.index)
    counts = [f"{prefix}_repeat_n", f"{prefix}_repeat_share", f"{prefix}_due_n"]
    out[counts] = out[counts].fillna(0.0)
    return out


def cycle_features(orders: pd.DataFrame, kinds: pd.Series, customers: pd.Series,
                   as_of: pd.Timestamp) -> pd.DataFrame:
    """Repurchase-cycle features of ``customers`` from the purchase lines strictly before ``as_of``
    (see the module docstring); NaN where a customer has no such item."""
    at = orders[ORDERED_AT] if orders[ORDERED_AT].dt.tz is None else orders[ORDERED_AT].dt.tz_convert(None)
    rows = orders.loc[(at < as_of) & (orders[QUANTITY] > 0) & orders[CUSTOMER_ID].notna(), [CUSTOMER_ID, PRODUCT_ID]]
    rows = rows.assign(day=at[rows.index].dt.floor("D"), kind=rows[PRODUCT_ID].map(kinds))
    products, product_days = _items(rows, PRODUCT_ID, as_of)
    out = _own_cycles(products, "product").join(
        _own_cycles(_items(rows.dropna(subset=["kind"]), "kind", as_of)[0], "kind"))

    gaps = product_days.dropna(subset=["gap"]).groupby(PRODUCT_ID)["gap"]
    shop_cycle = gaps.median().where(gaps.size() >= SHOP_MIN)
    last_day = rows.groupby(CUSTOMER_ID)["day"].max()
    last_order = rows.loc[rows["day"] == rows[CUSTOMER_ID].map(last_day), [CUSTOMER_ID, PRODUCT_ID]].drop_duplicates()
    last_order["ratio"] = (last_order[CUSTOMER_ID].map((as_of - last_day).dt.days)
                           / last_order[PRODUCT_ID].map(shop_cycle))
    ratio = last_order.groupby(CUSTOMER_ID)["ratio"]
    out["shop_cycle_overdue_min"], out["shop_cycle_overdue_median"] = ratio.min(), ratio.median()

    buyers = (products["n_days"] >= 2).groupby(level=PRODUCT_ID)
    rebuy = buyers.mean().where(buyers.size() >= SHOP_MIN)
    bought = products.index.to_frame(index=False)
    bought["rebuy"] = bought[PRODUCT_ID].map(rebuy)
    bought["typical"] = (bought["rebuy"] > rebuy.median()).astype(float).where(bought["rebuy"].notna())
    rate = bought.groupby(CUSTOMER_ID)
    out["shop_rebuy_mean"], out["shop_rebuy_typical_share"] = rate["rebuy"].mean(), rate["typical"].mean()
    return out.reindex(customers.to_numpy()).set_axis(customers.index)


def with_cycles(rows: pd.DataFrame, orders: pd.DataFrame, kinds: pd.Series) -> pd.DataFrame:
    """``rows`` with :func:`cycle_features` added, each row's from its own as_of."""
    parts = [cycle_features(orders, kinds, group[CUSTOMER_ID], pd.Timestamp(as_of))
             for as_of, group in rows.groupby(AS_OF_COLUMN)]
    return pd.concat([rows, pd.concat(parts).loc[rows.index]], axis=1)


def fit_predict(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, depth: int, rounds: int,
                weight: np.ndarray | None = None) -> np.ndarray:
    params = BASE_PARAMS | {"max_depth": depth, "seed": 0}
    return xgb.train(params, xgb.DMatrix(x, y, weight=weight), rounds).inplace_predict(x_test)


def best_over_grid(score) -> dict:
    results = {f"depth{d}_rounds{r}": round(score(d, r), 4) for d, r in GRID}
    best = max(results, key=results.get)
    return {"best": results[best], "best_at": best, "grid_median": round(float(np.median(list(results.values()))), 4),
            "grid": results}


def ceilings(fit_rows: pd.DataFrame | None, holdout: pd.DataFrame, columns: list[str]) -> dict:
    """Best holdout ROC-AUC per way of fitting; without ``fit_rows``, in-distribution only."""
    fit_rows = fit_rows if fit_rows is not None else holdout.iloc[:0]
    x_fit, y_fit = design_matrix(fit_rows, columns).to_numpy(np.float32), fit_rows[LABEL].to_numpy(int)
    x_hold, y_hold = design_matrix(holdout, columns).to_numpy(np.float32), holdout[LABEL].to_numpy(int)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(x_hold, y_hold))

    def cross_validated(depth: int, rounds: int, with_history: bool) -> float:
        predicted = np.zeros(len(y_hold))
        for train, test in folds:
            x, y, w = x_hold[train], y_hold[train], np.full(len(train), HOLDOUT_WEIGHT)
            if with_history:
                keep = ~fit_rows[CUSTOMER_ID].isin(holdout[CUSTOMER_ID].iloc[test]).to_numpy()
                x, y = np.vstack([x_fit[keep], x]), np.concatenate([y_fit[keep], y])
                w = np.concatenate([np.ones(keep.sum()), w])
            predicted[test] = fit_predict(x, y, x_hold[test], depth, rounds, w)
        return roc_auc_score(y_hold, predicted)

    out = {"in-distribution": best_over_grid(lambda d, r: cross_validated(d, r, False))}
    if len(fit_rows):
        out["time split"] = best_over_grid(lambda d, r: roc_auc_score(y_hold, fit_predict(x_fit, y_fit, x_hold, d, r)))
        out["in-distribution + history"] = best_over_grid(lambda d, r: cross_validated(d, r, True))
    return out


def main() -> None:
    data = WORK / "online_retail"
    if not (data / "orders.parquet").exists():
        import_online_retail(ONLINE_RETAIL, data)
    tables, _ = load_data_dir(data)
    folds = make_folds(tables, Target.CHURNED, AS_OF.to_pydatetime(), HORIZON, periods=12)
    fit_rows = pd.concat([folds.train, folds.valid, folds.calibration], ignore_index=True)
    holdout = folds.holdout.reset_index(drop=True)
    columns = feature_columns(fit_rows)

    # SVD axes are fitted per as_of and comparable only within one: the taste set is measured
    # in-distribution only, where training and test rows share the holdout's axes.
    taste = taste_features(tables, holdout[CUSTOMER_ID], AS_OF)
    orders, kinds = tables.frame("orders"), product_kinds(tables.frame("products"))
    fit_cycles, holdout_cycles = with_cycles(fit_rows, orders, kinds), with_cycles(holdout, orders, kinds)
    cycle_columns = [c for c in holdout_cycles.columns if c not in holdout.columns]
    logistic = LogRFMModel.fit(fit_rows, fit_rows[LABEL].to_numpy(int))
    results = {
        "protocol": "Online Retail, churn within 90 days, holdout as_of 2011-09-10, ROC-AUC",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "holdout_customers": len(holdout), "holdout_churn_rate": round(float(holdout[LABEL].mean()), 4),
        "fit_rows": len(fit_rows), "fit_as_of_dates": [f"{d:%Y-%m-%d}" for d in folds.fit_dates],
        "logistic_log_rfm_time_split": round(roc_auc_score(holdout[LABEL], logistic.predict_proba(holdout)), 4),
        "product_features": ceilings(fit_rows, holdout, columns),
        "product_features_plus_country_and_taste": ceilings(
            None, pd.concat([holdout, taste], axis=1), columns + list(taste.columns)),
        "product_features_plus_repurchase_cycles": ceilings(
            fit_cycles, holdout_cycles, columns + cycle_columns),
        "repurchase_cycle_columns": cycle_columns,
    }
    out = ROOT / "benchmarks" / "results" / "churn_ceiling.json"
    out.write_text(json.dumps(results, indent=1))

    table = Table(title=f"Churn ROC-AUC ceiling, {results['protocol']} (best of {len(GRID)} grid points)")
    for col in ("features", "fitted on", "best ROC-AUC", "at"):
        table.add_column(col)
    for features in ("product_features", "product_features_plus_country_and_taste",
                     "product_features_plus_repurchase_cycles"):
        for how, value in results[features].items():
            table.add_row(features.replace("_", " "), how, f"{value['best']:.4f}", value["best_at"])
    Console().print(table)
    print(f"logistic regression on log RFM (time split): {results['logistic_log_rfm_time_split']}; "
          f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
