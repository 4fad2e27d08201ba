"""The public event contract (contract.md §1): the Kafka envelope and its four event types.

`parse_envelope` turns the bytes of one message into a validated `Envelope`, or raises
`InvalidEvent` with every broken rule spelled out so that the producer can fix it.

Each type's `data` has versions (`DATA_MODELS`), picked by the envelope's `version`: call data
version 2 gives the duration in milliseconds. An envelope is validated and fingerprinted as it was
sent; `data_in_latest_version` converts its data to the latest version, the shape events are stored
and read in.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
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
        # A reason may quote the message (a key holding NUL, a lone surrogate escape): it travels in a
        # Kafka header, a PostgreSQL text column and a JSON answer, so it is kept to text they all take.
        reason = reason.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
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


def _shown(value: object, limit: int = 60) -> str:
    """A value as a producer would recognise it in a reason: numbers as written (`1E+400`, not
    `Decimal('1E+400')`), text quoted; cut to `limit` characters."""
    if isinstance(value, Decimal):
        shown = str(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            shown = str(value)
        except ValueError:  # more digits than Python will print
            shown = f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
    else:
        shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _number(value: object) -> Decimal | int | float | None:
    """The numeric value of an input pydantic may read as an integer, WITHOUT making it an int
    (int(Decimal("1e999999999")) would take for ever); None when it is not a finite number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except (InvalidOperation, ValueError):
            return None
    if isinstance(value, Decimal) and value.is_finite():
        return value
    return None


def _between(low: int, high: int, note: str = "") -> BeforeValidator:
    """Bounds an integer field to low..high, checked before pydantic turns the input into an int,
    so that a number like 1e400 is rejected by its range instead of becoming a 401-digit integer
    that no PostgreSQL column can hold (or, at 1e999999999, taking minutes to build)."""
    rule = f"must be an integer {low:,}–{high:,}{note}"

    def check(value: object) -> object:
        _not_boolean(value)
        number = _number(value)
        if number is not None and not low <= number <= high:
            raise ValueError(f"{rule} (got {_shown(value)})")
        return value

    return BeforeValidator(check)


Integer = Annotated[int, BeforeValidator(_not_boolean)]

# Upper bounds of the integer fields: whatever a read model sums or stores fits a PostgreSQL
# column. A week: in milliseconds (call data version 2), the sum of 10^10 calls still fits a bigint.
MAX_CALL_SECONDS = 604_800
MAX_CALL_MS = MAX_CALL_SECONDS * 1000
# A million units on one order line is far beyond any real order. A 1 MiB message holds fewer
# than 30,000 items (each at least ~36 bytes), so one message's quantities sum to < 3·10^10,
# and 3·10^8 such messages still fit a bigint; quantity × unit_price stays under 10^24, exact
# within the 60 digits of domain.rules.MONEY_CONTEXT.
MAX_ITEM_QUANTITY = 1_000_000
# The largest PostgreSQL `integer`.
MAX_VERSION = 2_147_483_647
Version = Annotated[int, _between(1, MAX_VERSION)]


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


CallOutcome = Literal["resolved", "unresolved", "voicemail", "no_answer"]


class CallDataV1(_Open):
    """Call data, version 1: the duration in whole seconds."""

    direction: Direction
    duration_seconds: Annotated[int, _between(0, MAX_CALL_SECONDS, " (a week at most)")]
    outcome: CallOutcome | None = None
    agent: str | None = None
    topic: str | None = None


class CallDataV2(_Open):
    """Call data, version 2: the duration in milliseconds; the other fields as in version 1."""

    direction: Direction
    duration_ms: Annotated[int, _between(0, MAX_CALL_MS, " (a week at most)")]
    outcome: CallOutcome | None = None
    agent: str | None = None
    topic: str | None = None


def call_data_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Validated call data of version 1 in version 2's shape: `duration_seconds` becomes
    `duration_ms` (× 1000) in its place; the other fields are kept as they are. A new dict."""
    upgraded: dict[str, Any] = {}
    for name, value in data.items():
        if name == "duration_seconds":
            upgraded["duration_ms"] = value * 1000
        elif name != "duration_ms":  # an unknown extra field of that name (stored before version 2): replaced
            upgraded[name] = value
    return upgraded


class EmailData(_Open):
    direction: Direction
    subject: str | None = None
    campaign: str | None = None


# Bounded so that sums stay exact: at most 18 digits before the point and 12 after it (30 in
# all; any currency, any unit). The places are counted as written, trailing zeros too, because
# the written scale is kept and shown ("10.50" stays "10.50"); leading zeros do not count.
MONEY_WHOLE_DIGITS = 18
MONEY_DECIMAL_PLACES = 12


def _money_digits(value: Decimal) -> Decimal:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: allow_inf_nan=False ran first
    places = max(0, -exponent)
    whole = 0 if value.is_zero() else max(0, value.adjusted() + 1)
    if whole > MONEY_WHOLE_DIGITS or places > MONEY_DECIMAL_PLACES:
        raise ValueError(
            f"must have at most {MONEY_WHOLE_DIGITS} digits before the point and {MONEY_DECIMAL_PLACES} "
            f"after it (got {_shown(value)})"
        )
    return value


Money = Annotated[Decimal, Field(ge=0, allow_inf_nan=False), AfterValidator(_money_digits)]


class PurchaseItem(_Open):
    sku: Identifier
    quantity: Annotated[int, _between(1, MAX_ITEM_QUANTITY)]
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

    @field_validator("score", mode="before")
    @classmethod
    def _score_in_range(cls, score: object, info: ValidationInfo) -> object:
        # Before the int conversion: 1e5000 must not become a 5,001-digit integer first.
        number = _number(score)
        if number is None:
            return score  # not a number: the integer rules say what is wrong
        kind = info.data.get("kind")
        if kind in SCORE_RANGES:
            low, high = SCORE_RANGES[kind]
            if not low <= number <= high:
                raise ValueError(f"{_shown(score)} is out of range for {kind}: must be an integer {low}–{high}")
        elif not 0 <= number <= 10:  # kind broken (reported on its own): the widest range
            raise ValueError(f"{_shown(score)} is out of range: must be an integer 0–10 (nps) or 1–5 (csat)")
        return score


# Every version of each type's `data`, oldest first; the envelope's `version` picks one. A new
# version is added here with its conversion from the one before in DATA_UPGRADES, and the domain
# event of its type gets the same `class_version` with an upcaster using that conversion.
DATA_MODELS: dict[str, dict[int, type[_Open]]] = {
    "call": {1: CallDataV1, 2: CallDataV2},
    "email": {1: EmailData},
    "purchase": {1: PurchaseData},
    "survey_response": {1: SurveyResponseData},
}
LATEST_VERSIONS: dict[str, int] = {event_type: max(models) for event_type, models in DATA_MODELS.items()}
DATA_UPGRADES: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("call", 1): call_data_v1_to_v2,
}


def data_in_latest_version(event_type: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
    """Validated `data` of `version` of `event_type` in its latest version's shape, converted one
    version after another (the same dict when it is the latest already)."""
    while version < LATEST_VERSIONS[event_type]:
        data = DATA_UPGRADES[event_type, version](data)
        version += 1
    return data


class Envelope(_Open):
    """One interaction event as published by a producer, validated and normalised (UTC)."""

    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    type: EventType
    occurred_at: datetime
    customer: CustomerRef
    source: str | None = None
    version: Version = 1
    data: dict[str, Any]

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _utc(cls, value: object) -> datetime:
        return parse_occurred_at(value)

    @property
    def customer_key(self) -> str:
        return self.customer.key

    def canonical(self) -> dict[str, Any]:
        """The content as a JSON-ready dict: times in UTC, absent and null fields alike."""
        return self._canonical

    def fingerprint(self) -> str:
        """Hash of the content: the same `event_id` with another fingerprint is a conflict."""
        return self._fingerprint

    # Computed once, kept in the instance's __dict__ (pydantic ignores cached properties in
    # equality and dumps; its private attributes cost ~10 µs a message to set up and read).
    @cached_property
    def _canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    @cached_property
    def _fingerprint(self) -> str:
        return hashlib.sha256(canonical_json(self._canonical)).hexdigest()


def canonical_json(content: dict[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8 as written: the bytes fingerprints are taken of. orjson
    writes exactly what `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
    writes for JSON-ready content (pinned by a test); what orjson refuses (an integer beyond 64
    bits) goes to the stdlib, and so does a lone surrogate, which then fails as it always did."""
    try:
        return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode()


_DATA_FIELD = {"data"}
_FIELDS_BEFORE_DATA = tuple(name for name in Envelope.model_fields if name != "data")


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
        message = f"{message} (got {_shown(error.get('input'))})"
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
            if "\x00" in str(key):
                return where
            if found := _find_nul(value, where):
                return found
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            if found := _find_nul(value, f"{path}.{index}"):
                return found
    return None


_VERSION = TypeAdapter(Version)


def _version_of(obj: dict[str, Any]) -> int | None:
    """The envelope's `version` as `Envelope` reads it, or None when it breaks its rule (which
    the envelope's validation reports)."""
    try:
        return _VERSION.validate_python(obj.get("version", 1))
    except ValidationError:
        return None


def _versions_named(versions: list[int]) -> str:
    if len(versions) == 1:
        return f"version {versions[0]} only"
    return "versions " + ", ".join(map(str, versions[:-1])) + f" and {versions[-1]}"


def _unknown_version(event_type: str, version: int) -> str:
    known = list(DATA_MODELS[event_type])
    hint = "send 1, or leave version out" if known == [1] else f"send one of them ({known[-1]} is the latest)"
    return f"version: {version} is not a version of {event_type}: {event_type} has {_versions_named(known)}; {hint}"


def _fields_of_other_versions(event_type: str, version: int, data: dict[str, Any], given: bool) -> list[str]:
    """Fields of `data` that another version of the type declares and this one does not: sent with
    the wrong `version` they would be kept as unknown extras that mean nothing, so they are refused,
    saying which version has them and what this one has instead. `given`: the envelope names its version."""
    models = DATA_MODELS[event_type]
    if len(models) == 1:
        return []
    own = models[version].model_fields
    this = f"version {version}" + ("" if given else ' (no "version" given)')
    problems = []
    for field in data:
        if field in own:
            continue
        other = next((v for v in sorted(models, reverse=True) if field in models[v].model_fields), None)
        if other is None:
            continue  # an unknown extra field: kept (contract §1)
        instead = " and ".join(f for f in own if f not in models[other].model_fields)
        fix = f"{this} has {instead} instead: send {instead}" if instead else f"{this} does not have it: leave it out"
        problems.append(f'data.{field}: is a field of version {other} of {event_type}; {fix}, or send "version": {other}')
    return problems


def validate_envelope(obj: object, may_hold_nul: bool = True) -> Envelope:
    """Validate one decoded JSON value against the contract (all broken rules at once).
    `may_hold_nul=False`: the caller knows no string in it holds U+0000."""
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
    typed: _Open | None = None
    models = DATA_MODELS.get(event_type) if isinstance(event_type, str) else None
    version = envelope.version if envelope is not None else _version_of(obj)
    if models is not None and version is not None:
        model = models.get(version)
        if model is None:
            problems.append(_unknown_version(str(event_type), version))
        elif isinstance(data, dict):
            try:
                typed = model.model_validate(data)
            except ValidationError as exc:
                problems.extend(_errors(exc, prefix="data."))
            problems.extend(_fields_of_other_versions(str(event_type), version, data, "version" in obj))
    if problems:
        raise InvalidEvent(_reason(problems), event_id=event_id)
    assert envelope is not None and typed is not None
    try:
        # The typed, normalised data replaces the raw dict; set in place because the model is
        # frozen and a model_copy per message costs more than the validation.
        data = envelope.__dict__["data"] = typed.model_dump(mode="json", exclude_none=True)
        # The canonical form without serialising `data` a second time: it is JSON-ready already.
        head = envelope.model_dump(mode="json", exclude_none=True, exclude=_DATA_FIELD)
        content = {k: head.pop(k) for k in _FIELDS_BEFORE_DATA if k in head}
        content["data"] = data
        content.update(head)  # the unknown extra fields, after the declared ones as model_dump puts them
        envelope.__dict__["_canonical"] = content
        envelope.fingerprint()
    except UnicodeEncodeError:
        raise InvalidEvent(
            "message contains an unpaired UTF-16 surrogate escape (like \\ud800), which is not text",
            event_id=event_id,
        ) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent(_not_serialisable(obj, exc), event_id=event_id) from None
    # After serialising: that bounds the nesting, so this recursive walk cannot overflow.
    if may_hold_nul and (nul := _find_nul(obj)):
        raise InvalidEvent(f"{nul}: contains the character U+0000 (NUL), which text cannot hold", event_id=event_id)
    return envelope


def _not_serialisable(obj: dict[str, Any], error: BaseException) -> str:
    """The reason for a valid-looking message that cannot be turned into its canonical JSON.
    Only a nesting problem is called one: pydantic stops serialising at a fixed depth."""
    if isinstance(error, RecursionError) or "depth" in str(error):
        depth, path = _deepest(obj)
        return f"{path}: nested too deeply to be stored ({depth:,} levels of arrays and objects)"
    return f"message cannot be stored as JSON ({type(error).__name__}: {error})"


def _deepest(obj: object) -> tuple[int, str]:
    """The field holding the deepest nesting of arrays and objects (`data.<field>` and
    `customer.<field>` inside those two) and how many levels it holds; iterative, any depth."""
    best, levels, where = 0, 0, "message"
    stack: list[tuple[object, int, tuple[str, ...]]] = [(obj, 0, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict | list):
            depth += 1
            if depth > best:
                named = min(len(path), 2 if path[:1] in (("data",), ("customer",)) else 1)
                best, levels, where = depth, depth - named, ".".join(path[:named]) or "message"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((child, depth, (*path, str(key))) for key, child in items)
    return levels, where


def parse_envelope(raw: bytes | str) -> Envelope:
    """Bytes of one Kafka message value → `Envelope`, or `InvalidEvent` saying what is wrong."""
    try:
        size = len(raw.encode() if isinstance(raw, str) else raw)
    except UnicodeEncodeError as exc:  # a str may hold a lone surrogate, which no UTF-8 text can
        raise InvalidEvent(f"message is not text: an unpaired UTF-16 surrogate at character {exc.start}") from None
    if size > MAX_MESSAGE_BYTES:
        raise InvalidEvent(f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES} (1 MiB)")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"message is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    obj, end = decode_json(text, 0)
    if text[end:].strip():
        raise InvalidEvent(f"message is not valid JSON: extra data after the value at character {end}")
    # JSON text can only carry a NUL as the escape \u0000 (the decoder rejects raw control
    # characters in strings): without that text, the walk over every string is not needed.
    return validate_envelope(obj, may_hold_nul="\\u0000" in text)


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
    except InvalidEvent:
        raise
    except RecursionError:
        raise InvalidEvent("message is not usable JSON: nested too deeply") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise InvalidEvent(_long_integer(text, start) or f"message is not usable JSON: {exc}") from None


class _LongInteger:
    def __init__(self, digits: int) -> None:
        self.digits = digits


def _long_integer(text: str, start: int) -> str | None:
    """When decoding failed on an integer too long for Python, decode again (only then, so the
    usual path stays fast) with a marker for such integers, to name the field that holds one."""
    limit = sys.get_int_max_str_digits()
    if not limit:
        return None

    def parse_int(literal: str) -> int | _LongInteger:
        digits = len(literal.lstrip("-"))
        return _LongInteger(digits) if digits > limit else int(literal)

    decoder = json.JSONDecoder(parse_float=Decimal, parse_int=parse_int, parse_constant=_reject_constant)
    try:
        obj, _ = decoder.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[object, tuple[str, ...]]] = [(obj, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _LongInteger):
            return (f"{'.'.join(path) or 'message'}: an integer of {value.digits:,} digits is too long "
                    f"(at most {limit:,} digits)")
        if isinstance(value, dict | list):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((child, (*path, str(key))) for key, child in reversed(list(items)))
    return None


def _json_kind(obj: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(obj), "number")


def customer_key(customer: object) -> str | None:
    """The customer key of a `customer` object: its id, else email, else phone (contract §1)."""
    if isinstance(customer, dict):
        for field in ("id", "email", "phone"):
            value = customer.get(field)
            if value and isinstance(value, str):
                return value
    return None


def customer_key_of(obj: object) -> str | None:
    """Best-effort customer key of a raw decoded message."""
    return customer_key(obj.get("customer")) if isinstance(obj, dict) else None


def utc_now() -> datetime:
    return datetime.now(UTC)
