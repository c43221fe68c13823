"""MovieLens ratings (userId, movieId, rating, timestamp) to interactions in the data contract.

Every rating becomes a ``product_view`` event (the user watched the movie); a rating of at least
``min_rating`` also becomes a one-item order line at price 0 (a strong positive, as a purchase is).
Ratings that are not in 0.5-5, without user or movie, with an unparseable time, or exact duplicates
are rejected with the reason; users forgotten in the output directory are left out. For recommender
benchmarks only: MovieLens may not ship in a product.

Its timestamps are unix seconds, UTC by definition: a shop's time zone does not apply (a zone other
than UTC is an error rather than silently ignored).
"""

from __future__ import annotations

from pathlib import Path

from features import schema as s
from features.errors import InputError
from features.importers.report import (
    ImportReport,
    check_import_paths,
    open_source,
    skip_forgotten_source,
    write_import,
)
from features.io import Encoding
from features.tables import Tables, create_empty
from features.timezones import check_timezone
from features.validate import DUPLICATE_REASON, ROW_ID, ContractError, now_utc

SOURCE_COLUMNS = ("userId", "movieId", "rating", "timestamp")
CUSTOMER_COLUMN = "userId"
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799  # 0001-01-01 and 9999-12-31T23:59:59, UTC


def import_movielens(src: Path | str, out_dir: Path | str, min_rating: float = 4.0,
                     encoding: Encoding | str = Encoding.UTF_8, timezone: str | None = None) -> ImportReport:
    if not 0.5 <= min_rating <= 5:
        raise ContractError(f"min_rating must be in [0.5, 5]; got {min_rating}.")
    if check_timezone(timezone) is not None:
        raise InputError(f"time zone {timezone!r}: MovieLens timestamps are unix seconds, already UTC; "
                         "a time zone does not apply to them. Leave it out (or give UTC).")
    src = Path(src)
    check_import_paths(src, out_dir)
    con = open_source(src, SOURCE_COLUMNS, "a MovieLens ratings file", encoding)
    now = now_utc()
    forgotten = skip_forgotten_source(con, CUSTOMER_COLUMN, out_dir)
    # unix seconds DuckDB can hold as a timestamp (years 1 to 9999); others do not parse
    seconds = f"""(CASE WHEN TRY_CAST("timestamp" AS BIGINT) BETWEEN {MIN_SECONDS} AND {MAX_SECONDS}
                        THEN TRY_CAST("timestamp" AS BIGINT) END)"""
    con.execute(
        f"""CREATE TEMP TABLE ratings AS
            SELECT {ROW_ID}, NULLIF(trim(userId), '') AS user_id, NULLIF(trim(movieId), '') AS movie_id,
                   TRY_CAST(rating AS DOUBLE) AS rating,
                   to_timestamp({seconds})::TIMESTAMP AS rated_at,
                   CASE WHEN NULLIF(trim(userId), '') IS NULL THEN 'missing userId'
                        WHEN NULLIF(trim(movieId), '') IS NULL THEN 'missing movieId'
                        WHEN TRY_CAST(rating AS DOUBLE) IS NULL THEN 'unparseable rating (expected a number)'
                        WHEN NOT TRY_CAST(rating AS DOUBLE) BETWEEN 0.5 AND 5 THEN 'rating outside 0.5-5'
                        WHEN {seconds} IS NULL
                          THEN 'unparseable timestamp (expected unix seconds)'
                        WHEN to_timestamp({seconds})::TIMESTAMP > $now
                          THEN 'timestamp is in the future (after {now:%Y-%m-%dT%H:%M:%S}Z)'
                        WHEN row_number() OVER (PARTITION BY userId, movieId, rating, "timestamp"
                                                ORDER BY {ROW_ID}) > 1 THEN '{DUPLICATE_REASON}'
                   END AS reason
            FROM _source""",
        {"now": now},
    )
    con.execute(
        f"""CREATE TABLE events AS
            SELECT user_id AS {s.CUSTOMER_ID}, '{s.EventType.PRODUCT_VIEW.value}' AS {s.EVENT_TYPE},
                   movie_id AS {s.PRODUCT_ID}, rated_at AS {s.OCCURRED_AT}
            FROM ratings WHERE reason IS NULL ORDER BY {ROW_ID}"""
    )
    con.execute(
        f"""CREATE TABLE orders AS
            SELECT 'ml' || {ROW_ID} AS {s.ORDER_ID}, user_id AS {s.CUSTOMER_ID}, movie_id AS {s.PRODUCT_ID},
                   1.0 AS {s.QUANTITY}, 0.0 AS {s.UNIT_PRICE}, rated_at AS {s.ORDERED_AT}
            FROM ratings WHERE reason IS NULL AND rating >= $min_rating ORDER BY {ROW_ID}""",
        {"min_rating": min_rating},
    )
    con.execute(
        f"""CREATE TABLE customers AS
            SELECT DISTINCT {s.CUSTOMER_ID}, CAST(NULL AS TIMESTAMP) AS {s.SIGNUP_AT},
                   CAST(NULL AS VARCHAR) AS {s.COUNTRY}, CAST(NULL AS BOOLEAN) AS {s.EMAIL_CONSENT}
            FROM events ORDER BY 1"""
    )
    create_empty(con, s.SPECS[s.Table.PRODUCTS])
    con.execute(
        f"INSERT INTO products ({s.PRODUCT_ID}) SELECT DISTINCT {s.PRODUCT_ID} FROM events ORDER BY 1"
    )
    con.execute(
        f"""CREATE TABLE ratings_rejects AS
            SELECT r.{ROW_ID} AS {s.SOURCE_ROW}, r.reason, src.* EXCLUDE ({ROW_ID})
            FROM ratings r JOIN _source src ON r.{ROW_ID} = src.{ROW_ID}
            WHERE r.reason IS NOT NULL ORDER BY 1"""
    )
    return write_import(Tables(con), str(src), "ratings_rejects", out_dir, forgotten=forgotten)
