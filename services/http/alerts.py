"""Alerts for a follow-up team (issue 16, contract §6): what Rapport raised, as `interactions.alerts` carries it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from domain.alerts import AlertKind
from domain.contract import utc_now
from projections.alerts import ALERTS
from services.alerts import alert_json
from services.http import params
from services.http.auth import ANALYST
from services.http.resources import Res

router = APIRouter(tags=["alerts"], dependencies=[ANALYST])


@router.get("/alerts", summary="Alerts raised: alarm answers, customers entering at_risk or churned (contract §6)")
def get_alerts(
    res: Res,
    since: Annotated[str | None, Query(description="alerts raised at or after this time; default 30 days ago")] = None,
    kind: Annotated[AlertKind | None, Query(description="only alerts of this kind; default all")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> dict[str, Any]:
    """Alerts raised at or after `since`, **newest first** (by `raised_at`, then `alert_id`), as a
    call-back list is read: the latest news on top, `next_cursor` pages back in time. Each item is the
    JSON of the alert's message on `interactions.alerts`; `revenue` and `last_contact_at` are as they
    were when the alert was raised. To follow alerts as they come, once each, consume the topic with
    `isolation_level=read_committed`: a page read now may miss an alert raised a moment earlier by a
    transaction still committing."""
    start = params.instant("since", since, default=utc_now() - timedelta(days=30))
    after = params.decode_cursor(cursor, datetime, str)
    conditions = ["raised_at >= %s"]
    values: list[Any] = [start]
    if kind is not None:
        conditions.append("kind = %s")
        values.append(kind.value)
    if after:
        conditions.append("(raised_at, alert_id) < (%s, %s)")
        values += after
    with res.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT * FROM {ALERTS.name} WHERE {' AND '.join(conditions)} "  # noqa: S608 - names from constants, values as parameters
            "ORDER BY raised_at DESC, alert_id DESC LIMIT %s", (*values, limit + 1),
        ).fetchall()
    page = rows[:limit]
    return {
        "items": [alert_json(r) for r in page],
        "next_cursor": params.encode_cursor(page[-1]["raised_at"], page[-1]["alert_id"]) if len(rows) > limit else None,
    }
