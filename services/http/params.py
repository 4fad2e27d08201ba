"""Query and path parameters shared by the routes: times, cursors, text. Each bad value is a 422
whose `detail` names the parameter and says what to send instead."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

from fastapi import HTTPException

from domain.contract import parse_occurred_at, utc_now

When = TypeVar("When", date, datetime)


def bad(parameter: str, message: str) -> HTTPException:
    return HTTPException(422, f"{parameter}: {message}")


def text(parameter: str, value: str) -> str:
    """Text for PostgreSQL: no NUL character (no stored id or name can hold one), no lone surrogate."""
    if "\x00" in value:
        raise bad(parameter, "contains the character U+0000 (NUL), which no customer id or name can hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a cursor decoded from JSON can hold one): not text PostgreSQL takes
        raise bad(parameter, "contains a lone UTF-16 surrogate, which is not a character; send UTF-8 text") from None
    return value


def instant(parameter: str, value: str | None, default: datetime | None = None) -> datetime:
    """An RFC 3339 date-time with a UTC offset (or a date, meaning its midnight in UTC), in UTC."""
    if value is None:
        return default if default is not None else utc_now()
    text(parameter, value)
    try:
        return datetime.combine(date.fromisoformat(value), time(), UTC) if len(value) == 10 else parse_occurred_at(value)
    except ValueError as error:
        raise bad(parameter, str(error).replace("; use RFC 3339", "; use a date (2026-03-01) or RFC 3339")) from None


def instant_if_given(parameter: str, value: str | None) -> datetime | None:
    """`instant`, or None when the parameter is absent (not defaulted to now)."""
    return None if value is None else instant(parameter, value)


def day(parameter: str, value: str | None, default: date) -> date:
    """A whole UTC day: a date, or a date-time at midnight UTC (satisfaction buckets are days)."""
    if value is None:
        return default
    moment = instant(parameter, value)
    if moment.timetz() != time(tzinfo=UTC):
        raise bad(parameter, f"{value!r} is not a whole day: satisfaction is counted by UTC day, so give a date "
                             "(2026-03-01) or midnight UTC (2026-03-01T00:00:00Z)")
    return moment.date()


def before(moment: When, span: timedelta) -> When:
    """`moment - span` (a default start computed from the end of a window), or the first instant
    there is when that falls before the year 1 (a client may well ask about `to=0001-01-01`)."""
    try:
        return moment - span
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC) if isinstance(moment, datetime) else date.min


def encode_cursor(*values: Any) -> str:
    """An opaque keyset cursor: the sort key of the last item of a page."""
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(value: str | None, *types: type) -> tuple[Any, ...] | None:
    """The sort key in a cursor made by `encode_cursor` with values of these types, or a 422."""
    if value is None:
        return None
    try:
        plain = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        if not isinstance(plain, list) or len(plain) != len(types):
            raise ValueError("wrong shape")
        decoded = tuple(datetime.fromisoformat(v) if t is datetime else t(v) for v, t in zip(plain, types, strict=True))
        for v in decoded:
            if isinstance(v, str):
                text("cursor", v)
            if isinstance(v, datetime) and v.tzinfo is None:
                raise ValueError("naive time")
        return decoded
    except (ValueError, TypeError, UnicodeDecodeError):
        raise bad("cursor", "is not a cursor this API gave; pass the `next_cursor` of the previous page as it is, "
                            "or leave it out for the first page") from None


def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with `Z`, without trailing zeros in the fraction (contract §3)."""
    if value is None:
        return None
    text_ = value.astimezone(UTC).replace(tzinfo=None).isoformat()
    return (text_.rstrip("0") if "." in text_ else text_) + "Z"
