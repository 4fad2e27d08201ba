"""`GET /lifecycle/stages` and `GET /lifecycle/flow` (contract §3, §3b): counts over the stage
intervals of the lifecycle read model (per-day changes and indexed range queries)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from domain.lifecycle import Stage
from projections.lifecycle import INTERVALS, STAGE_DAYS
from services.http import params
from services.http.auth import ANALYST
from services.http.resources import Res

router = APIRouter(tags=["lifecycle"], dependencies=[ANALYST])

DEFAULT_FLOW_DAYS = 30


@router.get("/lifecycle/stages", summary="How many customers are in each stage at a time (contract §3)")
def get_stages(
    res: Res,
    as_of: Annotated[str | None, Query(description="RFC 3339 time or date; default now. A future time tells "
                                                   "where customers will be if nothing else happens")] = None,
) -> dict[str, Any]:
    at = params.instant("as_of", as_of)
    day = datetime.combine(at.astimezone(UTC).date(), time(), UTC)
    with res.pool.connection() as conn:
        # Customers in a stage at `at` = intervals started by then minus intervals ended by then:
        # whole days from the per-day changes, `at`'s own day from the intervals (by index).
        rows = conn.execute(
            f"SELECT stage, sum(n) AS n FROM ("  # noqa: S608 - names from constants
            f"SELECT stage, change AS n FROM {STAGE_DAYS.name} WHERE day < %(day)s::date "
            f"UNION ALL SELECT stage, 1 FROM {INTERVALS.name} WHERE starts_at >= %(day)s AND starts_at <= %(at)s "
            f"UNION ALL SELECT stage, -1 FROM {INTERVALS.name} WHERE ends_at >= %(day)s AND ends_at <= %(at)s"
            ") AS changes GROUP BY stage", {"day": day, "at": at},
        ).fetchall()
    counts = {row["stage"]: int(row["n"]) for row in rows}
    return {"as_of": params.rfc3339(at), "stages": {stage.value: counts.get(stage.value, 0) for stage in Stage}}


@router.get("/lifecycle/flow", summary="How customers moved between stages in a period (contract §3b)")
def get_flow(
    res: Res,
    from_: Annotated[str | None, Query(alias="from", description="start, inclusive; default 30 days before `to`")] = None,
    to: Annotated[str | None, Query(description="end, exclusive; default now")] = None,
) -> dict[str, Any]:
    end = params.instant("to", to)
    start = params.instant("from", from_, default=params.before(end, timedelta(days=DEFAULT_FLOW_DAYS)))
    if start >= end:
        raise params.bad("from", f"must be before `to` ({params.rfc3339(start)} is not before {params.rfc3339(end)})")
    with res.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT previous_stage, stage, count(DISTINCT customer_id) AS n FROM {INTERVALS.name} "  # noqa: S608 - names from constants
            "WHERE since >= %s AND since < %s GROUP BY 1, 2 ORDER BY 1 NULLS FIRST, 2",
            (start, end),
        ).fetchall()
    return {
        "from": params.rfc3339(start), "to": params.rfc3339(end),
        "transitions": [{"from_stage": r["previous_stage"], "to_stage": r["stage"], "customers": r["n"]} for r in rows],
    }
