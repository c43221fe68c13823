"""How high can churn ROC-AUC go on the Online Retail protocol? An upper bound, measured.

Issue 3's protocol: churn within 90 days, scored at as_of 2011-09-10 from rows before it (3,368
customers). This script fits XGBoost over a grid (depth 1-4, 200/500/1,000 rounds at eta 0.03) and
reports, for each way of fitting, the BEST holdout ROC-AUC over the grid, i.e. with the grid point
picked on the holdout itself, which is optimistic on purpose:

* ``time split``: fitted on the stacked earlier as_of dates only (what the product does);
* ``in-distribution``: 5-fold cross-validation on the holdout customers themselves, features at
  2011-09-10 and labels from its window (the model sees the very distribution it is scored on);
* ``in-distribution + history``: the same folds, with every earlier training row added (rows of the
  test fold's customers left out), the holdout rows weighted 10 to 1.

The second feature set adds the customer's country (one-hot, 10 most common) and a 16-dimensional
SVD embedding of the products they bought before 2011-09-10 (a product-taste signal the product's
features lack), measured in-distribution.

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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xgboost as xgb  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scipy.sparse import csr_matrix  # noqa: E402
from sklearn.decomposition import TruncatedSVD  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from features.importers.uci_retail import import_online_retail  # noqa: E402
from features.io import load_data_dir  # noqa: E402
from features.schema import COUNTRY, CUSTOMER_ID, ORDERED_AT, PRODUCT_ID, QUANTITY  # noqa: E402
from features.tables import Tables  # noqa: E402
from features.training_set import Target  # noqa: E402
from training.linear import LogRFMModel  # noqa: E402
from training.design import design_matrix, feature_columns  # noqa: E402
from training.train import make_folds  # noqa: E402
from training.tuning import BASE_PARAMS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
AS_OF, HORIZON, LABEL = pd.Timestamp("2011-09-10"), 90, Target.CHURNED.value
GRID = list(product((1, 2, 3, 4), (200, 500, 1000)))  # (max_depth, rounds)
HOLDOUT_WEIGHT = 10.0


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


def fit_predict(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, depth: int, rounds: int,
                weight: np.ndarray | None = None) -> np.ndarray:
    params = BASE_PARAMS | {"max_depth": depth, "seed": 0}
    return xgb.train(params, xgb.DMatrix(x, y, weight=weight), rounds).inplace_predict(x_test)


def best_over_grid(score) -> dict:
    results = {f"depth{d}_rounds{r}": round(score(d, r), 4) for d, r in GRID}
    best = max(results, key=results.get)
    return {"best": results[best], "best_at": best, "grid": results}


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
    }
    out = ROOT / "benchmarks" / "results" / "churn_ceiling.json"
    out.write_text(json.dumps(results, indent=1))

    table = Table(title=f"Churn ROC-AUC ceiling, {results['protocol']} (best of {len(GRID)} grid points)")
    for col in ("features", "fitted on", "best ROC-AUC", "at"):
        table.add_column(col)
    for features in ("product_features", "product_features_plus_country_and_taste"):
        for how, value in results[features].items():
            table.add_row(features.replace("_", " "), how, f"{value['best']:.4f}", value["best_at"])
    Console().print(table)
    print(f"logistic regression on log RFM (time split): {results['logistic_log_rfm_time_split']}; "
          f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
