"""Online equals batch on real data: UCI Online Retail's last week of orders applied to the online
store started a week before the data's end gives the features the batch build computes at the end,
for every customer the week touched and a sample of the others (whose RFM ranks the week moves)."""

from __future__ import annotations

import random
from datetime import timedelta
from itertools import groupby
from pathlib import Path

from conftest import same_feature_value

from features.build import build_features
from features.importers.uci_retail import import_online_retail
from features.io import load_data_dir
from features.online import OnlineFeatures
from features.snapshot import data_end


def test_online_retails_last_week_online_equals_the_batch_build(online_retail_path: Path, tmp_path: Path) -> None:
    import_online_retail(online_retail_path, tmp_path / "retail")
    tables, _ = load_data_dir(tmp_path / "retail", tmp_path / "rejects")
    end = data_end(tables) + timedelta(microseconds=1)
    cut = end - timedelta(days=7)
    store = OnlineFeatures(tables.before(cut), cut)
    lines = tables.con.execute("SELECT order_id, customer_id, product_id, quantity, unit_price, ordered_at FROM orders "
                               "WHERE ordered_at >= ? ORDER BY ordered_at, order_id", [cut]).fetchall()
    orders = 0
    for order_id, rows in groupby(lines, key=lambda r: r[0]):
        rows = list(rows)
        store.apply_order(rows[0][1], order_id, [(r[2], r[3], r[4]) for r in rows], rows[0][5])
        orders += 1
    assert orders > 300  # a real week of the shop
    batch = build_features(tables, end).set_index("customer_id")
    touched = store.touched()
    others = random.Random(7).sample(sorted(set(batch.index) - touched), 150)
    mismatches = []
    for cid in [*sorted(touched), *others]:
        online = store.features(cid, end)
        mismatches += [(cid, name, online[name], value) for name, value in batch.loc[cid].items()
                       if name != "as_of" and not same_feature_value(online[name], value)]
    assert len(touched) > 300 and mismatches == []
