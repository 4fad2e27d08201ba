"""Operations: `GET /health`, `GET /projections` (contract §5) and `GET /metrics` (Prometheus)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from eventstore import tables
from projections.catalog import READ_MODELS
from projections.status import projection_status
from services.http.auth import ANALYST
from services.http.resources import Res

router = APIRouter(tags=["operations"])


@router.get("/health", summary="200 when PostgreSQL and Kafka answer, 503 naming the failing part (no key needed)")
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

@router.get("/projections", dependencies=[ANALYST],
            summary="Each read model's position in the event store's log, its lag and parked events")
def projections(res: Res) -> dict[str, Any]:
    with res.pool.connection() as conn:
        return {"items": projection_status(conn, list(READ_MODELS))}


@router.get("/metrics", dependencies=[ANALYST],
            summary="Prometheus metrics: ingest counters, each read model's position, lag and parked",
            response_class=PlainTextResponse)
def metrics(res: Res) -> PlainTextResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(res))
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _Snapshot(Collector):
    """Read from PostgreSQL at each scrape: the figures are those of the processes that wrote them
    (ingest and projector run apart from the API), exact across crashes."""

    def __init__(self, res: Any) -> None:
        self.res = res

    def collect(self) -> Iterator[Metric]:
        with self.res.pool.connection() as conn:
            status = projection_status(conn, list(READ_MODELS))
            counters = conn.execute(
                f"SELECT topic, sum(stored) AS stored, sum(duplicates) AS duplicates, "  # noqa: S608 - names from constants
                f"sum(dead_lettered) AS dead_lettered, sum(batches) AS batches FROM {tables.INGEST_COUNTERS} "
                "GROUP BY topic ORDER BY topic").fetchall()
        ingest = {
            "stored": CounterMetricFamily("rapport_ingest_events_stored", "New events stored by ingest",
                                          labels=["topic"]),
            "duplicates": CounterMetricFamily("rapport_ingest_duplicates", "Messages ignored as duplicates of a "
                                              "stored event", labels=["topic"]),
            "dead_lettered": CounterMetricFamily("rapport_ingest_dead_letters", "Messages dead-lettered (invalid "
                                                 "or conflicting)", labels=["topic"]),
            "batches": CounterMetricFamily("rapport_ingest_batches", "Batches stored, counted per partition they "
                                           "carried messages of", labels=["topic"]),
        }
        for row in counters:
            for field, family in ingest.items():
                family.add_metric([row["topic"]], int(row[field]))
        yield from ingest.values()
        gauges = {
            "position": GaugeMetricFamily("rapport_projection_position", "Last notification id applied",
                                          labels=["read_model"]),
            "head": GaugeMetricFamily("rapport_event_store_head", "Highest notification id in the event store"),
            "lag": GaugeMetricFamily("rapport_projection_lag_events", "Events not yet applied", labels=["read_model"]),
            "lag_seconds": GaugeMetricFamily("rapport_projection_lag_seconds", "Age of the oldest event not yet applied",
                                             labels=["read_model"]),
            "parked": GaugeMetricFamily("rapport_projection_parked_events", "Events parked by the read model",
                                        labels=["read_model"]),
        }
        for item in status:
            for field in ("position", "lag", "lag_seconds", "parked"):
                gauges[field].add_metric([item["name"]], item[field])
        gauges["head"].add_metric([], status[0]["head"] if status else 0)
        yield from gauges.values()
