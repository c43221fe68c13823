"""The data fingerprint: SHA-256 over every table's rows, whatever their order."""

from __future__ import annotations

import hashlib

import pandas as pd

from features.tables import Tables


def orders(*lines: tuple[str, str, str, float, float, str]) -> pd.DataFrame:
    frame = pd.DataFrame(lines, columns=["order_id", "customer_id", "product_id", "quantity", "unit_price",
                                         "ordered_at"])
    return frame.assign(ordered_at=pd.to_datetime(frame["ordered_at"], format="ISO8601"))


A = ("o1", "c1", "p1", 2.0, 9.99, "2024-01-01 10:00")
B = ("o2", "c2", "p2", 1.0, 0.1, "2024-01-02")
C = ("o3", "c3", "p1", 1.0, 5.0, "2024-01-03")


def test_rows_that_cancel_out_under_xor_still_change_it() -> None:
    """The old fingerprint XORed row hashes: a row twice cancelled out, so {A, B, B} and {A, C, C}
    (same count) collided."""
    assert Tables.from_frames(orders(A, B, B)).fingerprint() != Tables.from_frames(orders(A, C, C)).fingerprint()
    assert Tables.from_frames(orders(A, B, B)).fingerprint() != Tables.from_frames(orders(A, B)).fingerprint()


def test_row_order_does_not_matter_and_every_value_does() -> None:
    base = Tables.from_frames(orders(A, B, C)).fingerprint()
    assert Tables.from_frames(orders(C, A, B)).fingerprint() == base
    assert Tables.from_frames(orders(A, B, C).iloc[:, ::-1]).fingerprint() == base  # nor column order
    changed = [
        orders(A, B, ("o3", "c3", "p1", 1.0, 5.000000001, "2024-01-03")),  # a price, in the last digits
        orders(A, B, ("o3", "c3", "p1", 1.0, 5.0, "2024-01-03 00:00:00.000001")),  # a microsecond
        orders(A, B, ("o3", "c3", "p1 ", 1.0, 5.0, "2024-01-03")),  # a trailing space
        orders(A, B, ("o3", "c", "3p1", 1.0, 5.0, "2024-01-03")),  # the same characters, split elsewhere
    ]
    for frame in changed:
        assert Tables.from_frames(frame).fingerprint() != base, frame.iloc[-1].tolist()
    # a table moved: the same rows as customers' ids rather than no customers
    customers = pd.DataFrame({"customer_id": ["c1", "c2", "c3"]})
    assert Tables.from_frames(orders(A, B, C), customers).fingerprint() != base


def test_null_and_empty_text_differ() -> None:
    with_null = pd.DataFrame({"customer_id": ["c1"], "country": [None]})
    with_empty = pd.DataFrame({"customer_id": ["c1"], "country": [""]})
    with_word = pd.DataFrame({"customer_id": ["c1"], "country": ["NULL"]})
    prints = {Tables.from_frames(orders(A), c).fingerprint() for c in (with_null, with_empty, with_word)}
    assert len(prints) == 3


def _field(text: str | None) -> bytes:
    return b"N" if text is None else f"{len(text.encode())}:{text}".encode()


def _by_hand() -> str:
    """The fingerprint of the tiny tables below, from the definition with hashlib alone: per table
    ``name:rows:sorted columns``, then the sorted SHA-256 digests of each row's fields (columns in
    name order; doubles to 17 significant digits, timestamps as epoch microseconds)."""
    def us(day: str) -> str:
        return str((pd.Timestamp(day) - pd.Timestamp("1970-01-01")) // pd.Timedelta("1us"))

    order_rows = [  # customer_id, order_id, ordered_at, product_id, quantity, unit_price
        ["c1", "o1", us("2024-01-01 10:00"), "p1", f"{2.0:.17g}", f"{9.99:.17g}"],
        ["c2", "o2", us("2024-01-02"), "p2", f"{1.0:.17g}", f"{0.1:.17g}"],
    ]
    customer_rows = [  # country, customer_id, email_consent, signup_at
        ["UK", "c1", "true", us("2023-12-01")],
        [None, "c2", None, None],
    ]
    digest = hashlib.sha256()
    tables = [("orders", "customer_id,order_id,ordered_at,product_id,quantity,unit_price", order_rows),
              ("customers", "country,customer_id,email_consent,signup_at", customer_rows),
              ("events", "customer_id,event_type,occurred_at,product_id", []),
              ("products", "category,image_url,in_stock,name,price,product_id,url", [])]
    for name, columns, rows in tables:
        digest.update(f"{name}:{len(rows)}:{columns}\n".encode())
        digest.update(b"".join(sorted(hashlib.sha256(b"".join(map(_field, row))).digest() for row in rows)))
    return digest.hexdigest()[:16]


def test_pinned_value_of_a_tiny_table() -> None:
    """Pinned, and worked out by hand: a change of serialisation, hash or DuckDB behaviour shows
    here before it silently splits the fingerprints of champion and challenger (promotion
    compares them)."""
    customers = pd.DataFrame({"customer_id": ["c1", "c2"], "signup_at": [pd.Timestamp("2023-12-01"), pd.NaT],
                              "country": ["UK", None], "email_consent": [True, None]})
    tables = Tables.from_frames(orders(A, B), customers)
    assert f"{0.1:.17g}" == "0.10000000000000001"  # what the rows above hash for 0.1
    assert _by_hand() == "9dccea6943751d50"
    assert tables.fingerprint() == "9dccea6943751d50"


def test_the_fingerprint_follows_the_cut(tiny_tables: Tables) -> None:
    """Training tags the data before its as_of: rows after it do not change that fingerprint."""
    from datetime import datetime

    cut = datetime(2024, 1, 16)
    extra = pd.DataFrame({"order_id": ["o9"], "customer_id": ["b"], "product_id": ["p1"], "quantity": [1.0],
                          "unit_price": [10.0], "ordered_at": [pd.Timestamp("2024-01-20 12:00")]})
    more = Tables.from_frames(pd.concat([tiny_tables.frame("orders"), extra], ignore_index=True),
                              tiny_tables.frame("customers"), tiny_tables.frame("events"),
                              tiny_tables.frame("products"), tiny_tables.frame("customer_changes"))
    assert more.fingerprint() != tiny_tables.fingerprint()
    assert more.before(cut).fingerprint() == tiny_tables.before(cut).fingerprint()
    assert len(tiny_tables.fingerprint()) == 16 and int(tiny_tables.fingerprint(), 16) >= 0
