"""One customer: `GET /customers/{id}` (the single view, contract §3), its lifecycle history
(§3b) and its timeline (§3). The read-side queries of these routes live here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Response

from domain.contract import EVENT_TYPES, utc_now
from domain.lifecycle import Stage, StageInterval
from domain.rules import average_order_value, format_money, nps_category, preferred_channel
from projections import customer_360, lifecycle, timeline
from projections.customer_360 import count_column, last_column
from services.http import params
from services.http.resources import Res

router = APIRouter(tags=["customers"])

CustomerId = Annotated[str, Path(min_length=1, description="the customer.id, else the email, else the phone")]
AUDIT_LATER = "contract §5 (audit views): not available yet, answers 501"


def not_found(customer_id: str) -> HTTPException:
    return HTTPException(404, f"no customer with id {customer_id!r} (ids are the customer.id, else the email, "
                              "else the phone of their events)")


def no_audit_yet(as_of: str | None, known_at: str | None) -> None:
    if as_of is not None or known_at is not None:
        # Silently answering with today's view would mislead an auditor.
        raise HTTPException(501, "as_of and known_at (contract §5, audit views) are not available yet")


# `:path` lets customer ids hold '/': the routes under /customers/{id}/... come first.
@router.get("/customers/{customer_id:path}/lifecycle", summary="A customer's stage history (contract §3b)")
def get_lifecycle(customer_id: CustomerId, res: Res) -> dict[str, Any]:
    customer_id = params.text("customer_id", customer_id)
    now = utc_now()
    with res.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT stage, since, until, reason, event_id, previous_stage FROM {lifecycle.INTERVALS.name} "
            "WHERE customer_id = %s ORDER BY seq", (customer_id,),
        ).fetchall()
    if not rows:
        raise not_found(customer_id)
    # Up to now: a customer whose events all lie ahead has no history yet (as its view has no stage).
    items = [interval_json(i) for i in map(interval_of, rows) if i.starts_by(now)]
    if items:
        items[-1]["until"] = None  # the current stage: what comes next is not known yet
    return {"customer_id": customer_id, "items": items}


def interval_of(row: dict[str, Any]) -> StageInterval:
    previous = row["previous_stage"]
    return StageInterval(Stage(row["stage"]), row["since"], row["until"], row["reason"], row["event_id"],
                         Stage(previous) if previous else None)


def interval_json(interval: StageInterval) -> dict[str, Any]:
    return {"stage": interval.stage.value, "since": params.rfc3339(interval.since),
            "until": params.rfc3339(interval.until), "reason": interval.reason, "event_id": interval.event_id}


@router.get("/customers/{customer_id:path}/timeline", summary="A customer's events, newest first (contract §3)")
def get_timeline(
    customer_id: CustomerId,
    res: Res,
    limit: Annotated[int, Query(ge=1, le=500, description="items per page")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> dict[str, Any]:
    customer_id = params.text("customer_id", customer_id)
    after = params.decode_cursor(cursor, datetime, str)
    table = timeline.EVENTS.name
    # Keyset on the primary key (customer_id, occurred_at, event_id): an index scan from the
    # cursor on, and events stored meanwhile never shift the pages already given.
    where = "customer_id = %s" + (" AND (occurred_at, event_id) < (%s, %s)" if after else "")
    with res.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT event_id, type, occurred_at, source, data FROM {table} WHERE {where} "
            "ORDER BY occurred_at DESC, event_id DESC LIMIT %s",
            (customer_id, *(after or ()), limit + 1),
        ).fetchall()
        if not rows and after is None:
            raise not_found(customer_id)
    page = rows[:limit]
    return {
        "items": [{"event_id": r["event_id"], "type": r["type"], "occurred_at": params.rfc3339(r["occurred_at"]),
                   "source": r["source"], "data": r["data"]} for r in page],
        "next_cursor": params.encode_cursor(page[-1]["occurred_at"], page[-1]["event_id"]) if len(rows) > limit else None,
    }


@router.get("/customers/{customer_id:path}", summary="The single view of one customer (contract §3)",
            response_model=dict[str, Any])
def get_customer(
    customer_id: CustomerId,
    res: Res,
    as_of: Annotated[str | None, Query(description=AUDIT_LATER)] = None,
    known_at: Annotated[str | None, Query(description=AUDIT_LATER)] = None,
) -> Response:
    no_audit_yet(as_of, known_at)
    customer_id = params.text("customer_id", customer_id)
    with res.pool.connection() as conn:
        view = customer_view(conn, customer_id, utc_now())
    if view is None:
        raise not_found(customer_id)
    # Serialised here with orjson: the same JSON as FastAPI's encoder gives (compact, UTF-8), without
    # validating a dict against `dict[str, Any]` and encoding it a second time.
    return Response(orjson.dumps(view), media_type="application/json")


# One statement, so one snapshot and one round trip (psycopg prepares it after a few uses): the
# customer's row, its revenue per currency and skus as arrays, and the lifecycle interval holding now.
# Every part is an index range of this customer's rows.
VIEW_SQL = (
    f"SELECT c.*, r.currencies, r.revenues, r.orders, p.skus, l.stage, l.since FROM {customer_360.CUSTOMERS.name} c "
    "LEFT JOIN LATERAL (SELECT array_agg(currency ORDER BY currency) AS currencies, "
    "array_agg(revenue ORDER BY currency) AS revenues, array_agg(orders ORDER BY currency) AS orders "
    f"FROM {customer_360.REVENUE.name} WHERE customer_id = c.customer_id) r ON true "
    f"LEFT JOIN LATERAL (SELECT array_agg(sku ORDER BY sku) AS skus FROM {customer_360.PRODUCTS.name} "
    "WHERE customer_id = c.customer_id) p ON true "
    # Intervals never overlap, and those after the one holding now are the few that time alone will
    # bring: read from the latest backwards, a customer with thousands of intervals costs no more.
    f"LEFT JOIN LATERAL (SELECT stage, since FROM {lifecycle.INTERVALS.name} "
    "WHERE customer_id = c.customer_id AND during @> %(now)s::timestamptz ORDER BY seq DESC LIMIT 1) l ON true "
    "WHERE c.customer_id = %(id)s"
)


def customer_view(conn: Any, customer_id: str, now: datetime) -> dict[str, Any] | None:
    """The contract §3 JSON of one customer, or None if unknown (`conn` gives dict rows).
    The stage is the lifecycle read model's interval holding now: a customer with 100,000
    events answers like any other."""
    row = conn.execute(VIEW_SQL, {"id": customer_id, "now": now}).fetchone()
    return None if row is None else view_of(row)


def view_of(row: dict[str, Any]) -> dict[str, Any]:
    """The contract §3 JSON of one customer from its row of `VIEW_SQL`."""
    revenue = list(zip(row["currencies"] or (), row["revenues"] or (), row["orders"] or (), strict=True))
    return {
        "customer_id": row["customer_id"],
        "name": row["name"],
        "emails": list(row["emails"]),
        "phones": list(row["phones"]),
        "first_seen_at": params.rfc3339(row["first_seen_at"]),
        "last_seen_at": params.rfc3339(row["last_seen_at"]),
        "interaction_counts": {t: row[count_column(t)] for t in EVENT_TYPES},
        "last_contact_at": {t: params.rfc3339(row[last_column(t)]) for t in EVENT_TYPES},
        "preferred_channel": preferred_channel(
            row["inbound_calls"], row["last_inbound_call_at"], row["inbound_emails"], row["last_inbound_email_at"]
        ),
        "purchases": {
            "count": sum(n for _, _, n in revenue),
            "revenue": {currency: format_money(amount) for currency, amount, _ in revenue},
            "average_order_value": {
                currency: format_money(average_order_value(amount, n)) for currency, amount, n in revenue if n
            },
            "last_purchase_at": params.rfc3339(row[last_column("purchase")]),
            "products": list(row["skus"] or ()),
        },
        "satisfaction": {
            "responses": row[count_column("survey_response")],
            "last_nps_score": row["last_nps_score"],
            "nps_category": nps_category(row["last_nps_score"]),
            "average_nps_score": round(row["nps_sum"] / row["nps_responses"], 2) if row["nps_responses"] else None,
            "last_csat_score": row["last_csat_score"],
        },
        "lifecycle": {"stage": row["stage"], "since": params.rfc3339(row["since"])} if row["stage"] is not None
        else {"stage": None, "since": None},
    }
