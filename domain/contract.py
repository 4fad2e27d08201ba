"""The public event contract (contract.md §1): the Kafka envelope and its four event types.

`parse_envelope` turns the bytes of one message into a validated `Envelope`, or raises
`InvalidEvent` with every broken rule spelled out so that the producer can fix it.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_MESSAGE_BYTES = 1024 * 1024
EVENT_TYPES: tuple[str, ...] = ("call", "email", "purchase", "survey_response")
EventType = Literal["call", "email", "purchase", "survey_response"]
Direction = Literal["inbound", "outbound"]

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?$"
)
_TIME_HINT = "use RFC 3339 with a UTC offset, e.g. 2026-03-01T10:15:00Z or 2026-03-01T15:45:00+05:30"


class InvalidEvent(ValueError):
    """A message that breaks the contract; `reason` is written for the producer to act on."""

    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


def parse_occurred_at(value: object) -> datetime:
    """RFC 3339 with an offset → aware datetime in UTC. Naive times are rejected."""
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 string, not {type(value).__name__}; {_TIME_HINT}")
    match = _RFC3339.match(value)
    if not match:
        raise ValueError(f"{value!r} is not an RFC 3339 date-time; {_TIME_HINT}")
    if not match.group("offset"):
        raise ValueError(f"{value!r} has no UTC offset (naive times are ambiguous); {_TIME_HINT}")
    fraction = match.group(1)
    if fraction and len(fraction) > 7:  # Python keeps microseconds: trim nanoseconds, don't fail
        value = value.replace(fraction, fraction[:7], 1)
    try:
        return datetime.fromisoformat(value.replace("z", "Z")).astimezone(UTC)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid date-time ({exc}); {_TIME_HINT}") from None
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00 is past the year 9999 in UTC
        raise ValueError(f"{value!r} is out of the range of dates (years 1–9999 in UTC)") from None


class _Open(BaseModel):
    """Unknown extra fields are kept, not rejected (contract §1)."""

    model_config = ConfigDict(extra="allow", frozen=True)


NonEmpty = Annotated[str, Field(min_length=1)]
# Identifiers become keys of PostgreSQL indexes (at most 2,704 bytes): bounded like event_id.
Identifier = Annotated[str, Field(min_length=1, max_length=200)]


def _not_boolean(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, not a boolean (got {str(value).lower()})")
    return value


Integer = Annotated[int, BeforeValidator(_not_boolean)]


class CustomerRef(_Open):
    id: Identifier | None = None
    email: Identifier | None = None
    phone: Identifier | None = None
    name: Annotated[str, Field(max_length=500)] | None = None

    @model_validator(mode="after")
    def _named(self) -> CustomerRef:
        if not (self.id or self.email or self.phone):
            raise ValueError("needs at least one of id, email, phone to say who the customer is")
        return self

    @property
    def key(self) -> str:
        """The customer key: the id, else the email, else the phone (also the Kafka key)."""
        key = customer_key(self.__dict__)  # the declared fields, without a model_dump
        assert key is not None
        return key


class CallData(_Open):
    direction: Direction
    duration_seconds: Annotated[Integer, Field(ge=0)]
    outcome: Literal["resolved", "unresolved", "voicemail", "no_answer"] | None = None
    agent: str | None = None
    topic: str | None = None


class EmailData(_Open):
    direction: Direction
    subject: str | None = None
    campaign: str | None = None


# Bounded so that sums stay exact (30 digits, 12 after the point: any currency, any unit).
Money = Annotated[Decimal, Field(ge=0, allow_inf_nan=False, max_digits=30, decimal_places=12)]


class PurchaseItem(_Open):
    sku: Identifier
    quantity: Annotated[Integer, Field(gt=0)]
    unit_price: Money


class PurchaseData(_Open):
    order_id: Identifier
    amount: Money
    currency: str
    items: list[PurchaseItem] | None = None
    channel: str | None = None

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError(f"{value!r} is not an ISO 4217 code: use 3 upper-case letters, e.g. USD")
        return value


SCORE_RANGES: dict[str, tuple[int, int]] = {"nps": (0, 10), "csat": (1, 5)}


class SurveyResponseData(_Open):
    kind: Literal["nps", "csat"]
    score: Integer
    survey_id: str | None = None
    comment: str | None = None
    about_event_id: str | None = None

    @field_validator("score")
    @classmethod
    def _score_in_range(cls, score: int, info: ValidationInfo) -> int:
        kind = info.data.get("kind")
        if kind in SCORE_RANGES:
            low, high = SCORE_RANGES[kind]
            if not low <= score <= high:
                raise ValueError(f"{score} is out of range for {kind}: must be an integer {low}–{high}")
        return score


DATA_MODELS: dict[str, type[_Open]] = {
    "call": CallData,
    "email": EmailData,
    "purchase": PurchaseData,
    "survey_response": SurveyResponseData,
}


class Envelope(_Open):
    """One interaction event as published by a producer, validated and normalised (UTC)."""

    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    type: EventType
    occurred_at: datetime
    customer: CustomerRef
    source: str | None = None
    version: Annotated[Integer, Field(ge=1)] = 1
    data: dict[str, Any]
    _canonical: dict[str, Any] | None = PrivateAttr(None)
    _fingerprint: str | None = PrivateAttr(None)

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _utc(cls, value: object) -> datetime:
        return parse_occurred_at(value)

    @property
    def customer_key(self) -> str:
        return self.customer.key

    def canonical(self) -> dict[str, Any]:
        """The content as a JSON-ready dict: times in UTC, absent and null fields alike."""
        if self._canonical is None:
            self._canonical = self.model_dump(mode="json", exclude_none=True)
        return self._canonical

    def fingerprint(self) -> str:
        """Hash of the content: the same `event_id` with another fingerprint is a conflict."""
        if self._fingerprint is None:
            text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            self._fingerprint = hashlib.sha256(text.encode()).hexdigest()
        return self._fingerprint


def _describe(error: Any, prefix: str = "") -> str:
    loc = ".".join(str(part) for part in error["loc"])
    where = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "message")
    kind = error["type"]
    if kind == "missing":
        return f"{where}: is required"
    message = error["msg"].removeprefix("Value error, ")
    if kind in ("literal_error", "string_too_short", "string_too_long", "greater_than_equal",
                "greater_than", "int_parsing", "int_from_float", "decimal_parsing", "string_type",
                "int_type", "dict_type", "model_type", "list_type", "finite_number"):
        shown = repr(error.get("input"))
        if len(shown) > 60:
            shown = shown[:57] + "..."
        message = f"{message} (got {shown})"
    return f"{where}: {message}"


MAX_REASONS = 20  # a dead letter's reason travels in a Kafka header: keep it readable and small
MAX_REASON_CHARS = 4000


def _errors(exc: ValidationError, prefix: str = "") -> list[str]:
    return [_describe(error, prefix) for error in exc.errors(include_url=False)]


def _reason(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_REASONS])
    if len(problems) > MAX_REASONS:
        shown += f"; … and {len(problems) - MAX_REASONS} more problems"
    return shown if len(shown) <= MAX_REASON_CHARS else shown[: MAX_REASON_CHARS - 1] + "…"


def _find_nul(obj: object, path: str = "") -> str | None:
    """Path of the first string (or key) holding U+0000, which PostgreSQL text cannot store."""
    if isinstance(obj, str):
        return (path or "message") if "\x00" in obj else None
    if isinstance(obj, dict):
        for key, value in obj.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key) or (found := _find_nul(value, where)):
                return found or where
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            if found := _find_nul(value, f"{path}.{index}"):
                return found
    return None


def validate_envelope(obj: object) -> Envelope:
    """Validate one decoded JSON value against the contract (all broken rules at once)."""
    if not isinstance(obj, dict):
        raise InvalidEvent(f"message must be a JSON object, not a JSON {_json_kind(obj)}")
    event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
    problems: list[str] = []
    envelope: Envelope | None = None
    try:
        envelope = Envelope.model_validate(obj)
    except ValidationError as exc:
        problems.extend(_errors(exc))
    event_type, data = obj.get("type"), obj.get("data")
    if event_type in DATA_MODELS and isinstance(data, dict):
        try:
            typed = DATA_MODELS[event_type].model_validate(data)
        except ValidationError as exc:
            problems.extend(_errors(exc, prefix="data."))
        else:
            if envelope is not None:
                # The typed, normalised data replaces the raw dict; set in place because the
                # model is frozen and a model_copy per message costs more than the validation.
                envelope.__dict__["data"] = typed.model_dump(mode="json", exclude_none=True)
    if problems:
        raise InvalidEvent(_reason(problems), event_id=event_id)
    assert envelope is not None
    if nul := _find_nul(obj):
        raise InvalidEvent(f"{nul}: contains the character U+0000 (NUL), which text cannot hold", event_id=event_id)
    try:
        envelope.fingerprint()
    except UnicodeEncodeError:
        raise InvalidEvent(
            "message contains an unpaired UTF-16 surrogate escape (like \\ud800), which is not text",
            event_id=event_id,
        ) from None
    except (ValueError, RecursionError):  # e.g. pydantic's maximum serialization depth
        raise InvalidEvent("message is not usable JSON: nested too deeply", event_id=event_id) from None
    return envelope


def parse_envelope(raw: bytes | str) -> Envelope:
    """Bytes of one Kafka message value → `Envelope`, or `InvalidEvent` saying what is wrong."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > MAX_MESSAGE_BYTES:
        raise InvalidEvent(f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES} (1 MiB)")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"message is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    obj, end = decode_json(text, 0)
    if text[end:].strip():
        raise InvalidEvent(f"message is not valid JSON: extra data after the value at character {end}")
    return validate_envelope(obj)


def _reject_constant(name: str) -> object:
    raise InvalidEvent(f"message is not valid JSON: {name} is not a JSON number")


# Decimal keeps every digit of a number sent as a JSON number (money must not be rounded).
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def decode_json(text: str, start: int) -> tuple[Any, int]:
    """One JSON value of `text` from `start` (after whitespace) and where it ends; the one decoder
    of Kafka and HTTP input alike. Raises `InvalidEvent`."""
    while start < len(text) and text[start] in " \t\r\n":
        start += 1
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"message is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidEvent("message is not usable JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise InvalidEvent(f"message is not usable JSON: {exc}") from None


def _json_kind(obj: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(obj), "number")


def customer_key(customer: object) -> str | None:
    """The customer key of a `customer` object: its id, else email, else phone (contract §1)."""
    if isinstance(customer, dict):
        for field in ("id", "email", "phone"):
            if isinstance(customer.get(field), str) and customer[field]:
                return str(customer[field])
    return None


def customer_key_of(obj: object) -> str | None:
    """Best-effort customer key of a raw decoded message."""
    return customer_key(obj.get("customer")) if isinstance(obj, dict) else None


def utc_now() -> datetime:
    return datetime.now(UTC)
