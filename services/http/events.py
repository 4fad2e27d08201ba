"""`POST /events` (contract §2): validate one envelope or an array, publish the valid ones to Kafka."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from kafka.errors import KafkaError

from domain.contract import MAX_MESSAGE_BYTES, InvalidEvent, decode_json, validate_envelope
from domain.identity import DEFAULT_REGION, UnreadableIdentifier, identifiers_of
from services.http.auth import PRODUCER
from services.http.resources import Resources

MAX_EVENTS_PER_REQUEST = 1000

log = logging.getLogger("rapport.api")

router = APIRouter(tags=["events in"], dependencies=[PRODUCER])


@router.post("/events", status_code=202, summary="Publish one event or an array of up to 1,000 (contract §2)")
async def post_events(request: Request) -> JSONResponse:
    body = await request.body()
    res: Resources = request.app.state.resources
    items, errors = split_events_body(body, res.settings.default_phone_region)
    if errors:
        return JSONResponse(status_code=422, content={
            "detail": f"{len(errors)} of {max(len(items) + len(errors), 1)} events rejected; nothing was published",
            "errors": errors,
        })
    try:
        accepted = await run_in_threadpool(publish, res, items)
    except KafkaError as error:
        return JSONResponse(status_code=503, content={
            "detail": f"Kafka did not take the events ({type(error).__name__}: {error}); some may have been "
            "published. Send the same request again: events already received are recognised by event_id "
            "and ignored.",
        })
    return JSONResponse(status_code=202, content={"accepted": accepted})


def split_events_body(body: bytes, region: str = DEFAULT_REGION) -> tuple[list[tuple[bytes, Any]], list[dict[str, Any]]]:
    """Split a request body (one envelope or an array) into items with their exact original bytes,
    validating each (its email and phone too, as ingest reads them: `region` for phones without a
    country code); returns the valid items and the per-item errors."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [{"index": None, "event_id": None, "reason": f"body is not UTF-8 text ({exc.reason})"}]
    stripped = text.strip()
    if not stripped:
        return [], [{"index": None, "event_id": None, "reason": "body is empty: send one event object or an array"}]
    raw_items: list[tuple[str, Any]] = []
    try:
        if stripped.startswith("["):
            position = _skip(text, text.index("[") + 1)
            while text[position] != "]" or raw_items:
                start = _skip(text, position)
                obj, end = decode_json(text, start)
                raw_items.append((text[start:end], obj))
                position = _skip(text, end)
                if text[position] == "]":
                    break
                if text[position] != ",":
                    raise InvalidEvent(f"body is not valid JSON: expected ',' or ']' at character {position}")
                position += 1
            if _skip(text, position + 1) != len(text):
                raise InvalidEvent("body is not valid JSON: extra data after the array")
        else:
            start = _skip(text, 0)
            obj, end = decode_json(text, start)
            if _skip(text, end) != len(text):
                raise InvalidEvent("body is not valid JSON: extra data after the event")
            raw_items.append((text[start:end], obj))
    except InvalidEvent as invalid:
        return [], [{"index": None, "event_id": None, "reason": invalid.reason.replace("message", "body", 1)}]
    except IndexError:
        return [], [{"index": None, "event_id": None, "reason": "body is not valid JSON: it ends too early"}]
    if not raw_items:
        return [], [{"index": None, "event_id": None, "reason": "the array is empty: send at least one event"}]
    if len(raw_items) > MAX_EVENTS_PER_REQUEST:
        return [], [{"index": None, "event_id": None,
                     "reason": f"{len(raw_items)} events in one request; the limit is {MAX_EVENTS_PER_REQUEST}"}]
    items: list[tuple[bytes, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, (raw, obj) in enumerate(raw_items):
        encoded = raw.encode()
        event_id = obj.get("event_id") if isinstance(obj, dict) and isinstance(obj.get("event_id"), str) else None
        if event_id is not None:  # echoed as written: a lone surrogate escape (\ud800) is not UTF-8 text
            event_id = event_id.encode("utf-8", "backslashreplace").decode()
        try:
            if len(encoded) > MAX_MESSAGE_BYTES:
                raise InvalidEvent(f"event is {len(encoded)} bytes; the limit is {MAX_MESSAGE_BYTES} (1 MiB)")
            envelope = validate_envelope(obj)
            identifiers_of(envelope.customer.__dict__, region)
        except InvalidEvent as invalid:
            errors.append({"index": index, "event_id": event_id, "reason": invalid.reason})
            continue
        except UnreadableIdentifier as unreadable:
            errors.append({"index": index, "event_id": event_id, "reason": unreadable.reason})
            continue
        except Exception as error:  # a bug of ours: reject the event, as ingest dead-letters it, not a 500
            log.exception("POST /events: validating item %d failed unexpectedly", index)
            reason = (f"could not be validated ({type(error).__name__}: {error}); report this to Rapport's "
                      "maintainers with the event")
            errors.append({"index": index, "event_id": event_id,
                           "reason": reason.encode("utf-8", "backslashreplace").decode()})
            continue
        items.append((encoded, envelope))
    return items, errors


def _skip(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def publish(res: Resources, items: list[tuple[bytes, Any]]) -> list[str]:
    """Write the original bytes of each event to the topic, keyed by customer; wait for acks."""
    producer = res.producer
    futures = [
        producer.send(res.settings.topic, key=envelope.customer_key.encode(), value=raw)
        for raw, envelope in items
    ]
    producer.flush(timeout=30)
    for future in futures:
        future.get(timeout=30)
    return [envelope.event_id for _, envelope in items]

