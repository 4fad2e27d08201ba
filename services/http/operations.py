"""Operations: `GET /health` and `GET /projections` (contract §5)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from eventstore import tables
from projections.runner import TRACKING_TABLE
from services.bootstrap import PROJECTIONS
from services.http.resources import Res

router = APIRouter(tags=["operations"])


@router.get("/health", summary="200 when PostgreSQL and Kafka answer, 503 naming the failing part")
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

@router.get("/projections", summary="Each read model's position in the event store's log, and its lag")
def projections(res: Res) -> dict[str, Any]:
    with res.pool.connection() as conn:
        # One statement, one snapshot: a position is never ahead of the head it is compared with.
        rows = conn.execute(
            "SELECT t.application_name, t.notification_id, "
            "(SELECT COALESCE(MAX(notification_id), 0) FROM " + tables.EVENTS + ") AS head "
            f"FROM (SELECT NULL) AS one LEFT JOIN {TRACKING_TABLE} t ON true"  # noqa: S608 - constant
        ).fetchall()
    positions = {r["application_name"]: r["notification_id"] for r in rows if r["application_name"]}
    head_id = rows[0]["head"] if rows else 0
    return {"items": [
        {"name": p.name, "position": positions.get(p.name, 0), "head": head_id,
         "lag": head_id - positions.get(p.name, 0)}
        for p in PROJECTIONS
    ]}

