"""Dates as the user gives them: ISO 8601 only (``2011-10-09``, ``2011-10-09T10:30``, with ``Z`` or an
offset for another zone than UTC): ``10/09/2011`` is October 9th in one country and September 10th
in another. An as_of in the future is refused: no data exists there yet."""

from __future__ import annotations

from datetime import UTC, datetime

from features.errors import InputError
from features.validate import now_utc

ISO_EXAMPLES = "YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], with Z or +HH:MM for another zone than UTC"


def parse_iso_date(value: str | datetime) -> datetime:
    """A naive-UTC datetime from an ISO 8601 date or timestamp; anything else is an InputError."""
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise InputError(f"{str(value)!r} is not an ISO 8601 date: expected {ISO_EXAMPLES}, "
                             "e.g. 2011-10-09 for October 9th, 2011.") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def check_not_future(when: datetime) -> datetime:
    """``when`` itself; an InputError when it is after now (UTC)."""
    now = now_utc()
    if when > now:
        raise InputError(f"{when:%Y-%m-%dT%H:%M:%S} is in the future (it is now {now:%Y-%m-%dT%H:%M}Z): "
                         "no data exists there yet. Expected a moment in the past.")
    return when
