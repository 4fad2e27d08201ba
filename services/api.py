"""HTTP API (contract §2, §3): the single customer view, event ingest over HTTP, health, progress."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from kafka.errors import KafkaError
from psycopg_pool import ConnectionPool

from consumers.ingest import kafka_producer
from domain.contract import MAX_MESSAGE_BYTES, InvalidEvent, decode_json, validate_envelope
from projections.customer_360 import fetch_customer_view
from projections.runner import TRACKING_TABLE
from services.bootstrap import PROJECTIONS, ServiceUnavailable, check_kafka, ensure_schema, read_pool
from services.settings import Settings

MAX_EVENTS_PER_REQUEST = 1000


class Resources:
    """What the routes share: settings, a read pool, a Kafka producer made on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ensure_schema(settings)  # queries never meet a missing table, even on a new database
        self.pool: ConnectionPool = read_pool(settings)
        self._producer: Any = None
        self._kafka_checked: tuple[float, str] = (0.0, "")
        self._lock = threading.Lock()

    @property
    def producer(self) -> Any:
        with self._lock:
            if self._producer is None:
                self._producer = kafka_producer(self.settings.kafka_servers, max_block_ms=5000,
                                                bootstrap_timeout_ms=5000, request_timeout_ms=10000)
            return self._producer

    def kafka_status(self) -> str:
        """'ok', or what is wrong: a real metadata request, cached for 2 s."""
        checked_at, status = self._kafka_checked
        if time.monotonic() - checked_at < 2.0:
            return status
        try:
            check_kafka(self.settings, [self.settings.topic])
            status = "ok"
        except ServiceUnavailable as error:
            status = f"unavailable: {str(error).splitlines()[0]}"
        self._kafka_checked = (time.monotonic(), status)
        return status

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
        self.pool.close()


def resources(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


# Module level: route annotations are strings (PEP 563) that FastAPI resolves in this module.
Res = Annotated[Resources, Depends(resources)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.resources = Resources(settings)
        yield
        app.state.resources.close()

    app = FastAPI(
        title="Rapport",
        version="1",
        description="Event-sourced customer-interaction tracker: publish interactions, read the customer view.",
        lifespan=lifespan,
    )

    # `:path` lets customer ids hold '/'; routes under /customers/{id}/… must be declared above it.
    @app.get("/customers/{customer_id:path}", summary="The single view of one customer (contract §3)")
    def get_customer(
        customer_id: Annotated[str, Path(min_length=1, description="the customer.id, else the email, else the phone")],
        res: Res,
        as_of: Annotated[str | None, Query(description="contract §5: not built yet (501)")] = None,
        known_at: Annotated[str | None, Query(description="contract §5: not built yet (501)")] = None,
    ) -> dict[str, Any]:
        if as_of is not None or known_at is not None:
            # Silently answering with today's view would mislead an auditor.
            raise HTTPException(501, "as_of and known_at (contract §5, audit views) are not available yet")
        with res.pool.connection() as conn:
            view = fetch_customer_view(conn, customer_id, datetime.now(UTC), res.settings.thresholds)
        if view is None:
            raise HTTPException(404, f"no customer with id {customer_id!r} (ids are the customer.id, "
                                     "else the email, else the phone of their events)")
        return view

    @app.post("/events", status_code=202, summary="Publish one event or an array of up to 1,000 (contract §2)")
    async def post_events(request: Request) -> JSONResponse:
        body = await request.body()
        items, errors = split_events_body(body)
        if errors:
            return JSONResponse(status_code=422, content={
                "detail": f"{len(errors)} of {max(len(items) + len(errors), 1)} events rejected; nothing was published",
                "errors": errors,
            })
        res: Resources = request.app.state.resources
        try:
            accepted = await run_in_threadpool(publish, res, items)
        except KafkaError as error:
            return JSONResponse(status_code=503, content={
                "detail": f"Kafka did not take the events ({type(error).__name__}: {error}); some may have been "
                "published. Send the same request again: events already received are recognised by event_id "
                "and ignored.",
            })
        return JSONResponse(status_code=202, content={"accepted": accepted})

    @app.get("/health", summary="200 when PostgreSQL and Kafka answer, 503 naming the failing part")
    def health(res: Res) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with res.pool.connection(timeout=5) as conn:
                conn.execute("SELECT 1")
            checks["postgresql"] = "ok"
        except Exception as error:  # noqa: BLE001 - any failure means unavailable
            checks["postgresql"] = f"unavailable: {error}"
        checks["kafka"] = res.kafka_status()
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(status_code=200 if healthy else 503,
                            content={"status": "ok" if healthy else "unavailable", "checks": checks})

    @app.get("/projections", summary="Each read model's position in the event store's log, and its lag")
    def projections(res: Res) -> dict[str, Any]:
        with res.pool.connection() as conn:
            # One statement, one snapshot: a position is never ahead of the head it is compared with.
            rows = conn.execute(
                "SELECT t.application_name, t.notification_id, "
                "(SELECT COALESCE(MAX(notification_id), 0) FROM rapport_events) AS head "
                f"FROM (SELECT NULL) AS one LEFT JOIN {TRACKING_TABLE} t ON true"  # noqa: S608 - constant
            ).fetchall()
        positions = {r["application_name"]: r["notification_id"] for r in rows if r["application_name"]}
        head_id = rows[0]["head"] if rows else 0
        return {"items": [
            {"name": p.name, "position": positions.get(p.name, 0), "head": head_id,
             "lag": head_id - positions.get(p.name, 0)}
            for p in PROJECTIONS
        ]}

    return app


def split_events_body(body: bytes) -> tuple[list[tuple[bytes, Any]], list[dict[str, Any]]]:
    """Split a request body (one envelope or an array) into items with their exact original bytes,
    validating each; returns the valid items and the per-item errors."""
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
        try:
            if len(encoded) > MAX_MESSAGE_BYTES:
                raise InvalidEvent(f"event is {len(encoded)} bytes; the limit is {MAX_MESSAGE_BYTES} (1 MiB)")
            envelope = validate_envelope(obj)
        except InvalidEvent as invalid:
            errors.append({"index": index, "event_id": event_id, "reason": invalid.reason})
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

