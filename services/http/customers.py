"""One customer: `GET /customers/{id}` (the single view, contract §3), its lifecycle history
(§3b) and its timeline (§3), live from the read models or, with `as_of` / `known_at`, at a point
in time from the event store (§5, `projections.point_in_time`). The read-side queries of these
routes live here; both ways render through the same functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response

from domain.contract import EVENT_TYPES, utc_now
from domain.customer import Customer
from domain.lifecycle import Stage, StageInterval
from domain.rules import average_order_value, format_money, nps_category, preferred_channel
from projections import customer_360, lifecycle, timeline
from projections.checkpoints import CustomerFold
from projections.customer_360 import count_column, last_column
from projections.point_in_time import IdentityAt, PointInTime, PointInTimeViews
from services import value
from services.http import identity, params
from services.http.auth import CUSTOMER_READER
from services.http.identity import By
from services.http.resources import Res

router = APIRouter(tags=["customers"], dependencies=[CUSTOMER_READER])

CustomerId = Annotated[str, Path(min_length=1, description="the customer's id, or any of its identifiers: an account "
                                                          "id, an email or a phone (`by` says which)")]
AsOf = Annotated[str | None, Query(
    description="RFC 3339 time or date (contract §5): built from the event store, only from the events that "
                "occurred by then, and evaluated then (stages reached by the passing of time included): what was "
                "true then. With `known_at` too: what was known at `known_at` about that time")]
KnownAt = Annotated[str | None, Query(
    description="RFC 3339 time or date (contract §5): built from the event store, only from the events Rapport "
                "had recorded by then (each stored event's recorded time), and evaluated then: what we knew then")]


def not_found(customer_id: str) -> HTTPException:
    return HTTPException(404, f"no customer with id {customer_id!r} (give its id, or any account id, email or phone "
                              "of its events; ?by=id|email|phone says which)")


def point_in_time(as_of: str | None, known_at: str | None) -> PointInTime | None:
    """The point in time asked for (a 422 naming a bad parameter), or None for the live view."""
    as_of_time, known_at_time = params.instant_if_given("as_of", as_of), params.instant_if_given("known_at", known_at)
    if as_of_time is None and known_at_time is None:
        return None
    return PointInTime(as_of_time, known_at_time)


def fold_at(res: Res, customer_id: str, point: PointInTime) -> CustomerFold:
    """The read models' fold of the customer's events that `point` admits, from the event store;
    404 when there are none."""
    fold = res.point_in_time.fold(customer_id, point)
    if fold is None:
        raise unknown_at(customer_id, point)
    return fold


def unknown_at(customer_id: str, point: PointInTime) -> HTTPException:
    """The 404 of a customer none of whose events `point` admits, saying which parameter excluded them."""
    if point.as_of is None:
        known = f"Rapport had recorded no event of it by {params.rfc3339(point.known_at)} (known_at)"
    else:
        known = f"none of its events occurred by {params.rfc3339(point.as_of)} (as_of)" + (
            "" if point.known_at is None else
            f" among those Rapport had recorded by {params.rfc3339(point.known_at)} (known_at)")
    return HTTPException(404, f"no customer with id {customer_id!r} at that point in time: {known}")


# `:path` lets customer ids hold '/': the routes under /customers/{id}/... come first.
@router.get("/customers/{customer_id:path}/lifecycle", summary="A customer's stage history (contract §3b, §5)")
def get_lifecycle(customer_id: CustomerId, request: Request, res: Res, as_of: AsOf = None, known_at: KnownAt = None,
                  by: By = None) -> dict[str, Any]:
    point = point_in_time(as_of, known_at)
    customer_id = params.text("customer_id", customer_id)
    if point is not None:
        history = fold_at(res, customer_id, point).history()
        return {"customer_id": customer_id, "items": history_json(history, point.at)}
    customer_id = identity.canonical(res, request, customer_id, by)
    with res.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT stage, since, until, reason, event_id, previous_stage FROM {lifecycle.INTERVALS.name} "  # noqa: S608 - names from constants
            "WHERE customer_id = %s ORDER BY seq", (customer_id,),
        ).fetchall()
    if not rows:
        raise not_found(customer_id)
    return {"customer_id": customer_id, "items": history_json(map(interval_of, rows), utc_now())}


def history_json(intervals: Iterable[StageInterval], at: datetime) -> list[dict[str, Any]]:
    """The stage history up to `at`, oldest first. Intervals run ahead (what time alone will bring):
    a customer whose events all lie after `at` has no history yet (as its view has no stage)."""
    items = [interval_json(i) for i in intervals if i.starts_by(at)]
    if items:
        items[-1]["until"] = None  # the current stage: what comes next is not known yet
    return items


def interval_of(row: dict[str, Any]) -> StageInterval:
    previous = row["previous_stage"]
    return StageInterval(Stage(row["stage"]), row["since"], row["until"], row["reason"], row["event_id"],
                         Stage(previous) if previous else None)


def interval_json(interval: StageInterval) -> dict[str, Any]:
    return {"stage": interval.stage.value, "since": params.rfc3339(interval.since),
            "until": params.rfc3339(interval.until), "reason": interval.reason, "event_id": interval.event_id}


@router.get("/customers/{customer_id:path}/timeline", summary="A customer's events, newest first (contract §3, §5)")
def get_timeline(
    customer_id: CustomerId,
    request: Request,
    res: Res,
    limit: Annotated[int, Query(ge=1, le=500, description="items per page")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    as_of: AsOf = None,
    known_at: KnownAt = None,
    by: By = None,
) -> dict[str, Any]:
    point = point_in_time(as_of, known_at)
    customer_id = params.text("customer_id", customer_id)
    after = params.decode_cursor(cursor, datetime, str)
    if point is not None:
        newest_first = res.point_in_time.timeline(customer_id, point, after, limit)
        if newest_first is None:
            raise unknown_at(customer_id, point)
        return timeline_page(newest_first, limit)
    customer_id = identity.canonical(res, request, customer_id, by)
    table = timeline.EVENTS.name
    # Keyset on the primary key (customer_id, occurred_at, event_id): an index scan from the
    # cursor on, and events stored meanwhile never shift the pages already given.
    where = "customer_id = %s" + (" AND (occurred_at, event_id) < (%s, %s)" if after else "")
    with res.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT event_id, type, occurred_at, source, data FROM {table} WHERE {where} "  # noqa: S608 - names from constants
            "ORDER BY occurred_at DESC, event_id DESC LIMIT %s",
            (customer_id, *(after or ()), limit + 1),
        ).fetchall()
        if not rows and after is None:
            raise not_found(customer_id)
    return timeline_page(rows, limit)


def timeline_page(rows: list[Any], limit: int) -> dict[str, Any]:
    """A page of the timeline from up to `limit + 1` rows, newest first (one more: there is a next page)."""
    page = rows[:limit]
    return {
        "items": [{"event_id": r["event_id"], "type": r["type"], "occurred_at": params.rfc3339(r["occurred_at"]),
                   "source": r["source"], "data": r["data"]} for r in page],
        "next_cursor": params.encode_cursor(page[-1]["occurred_at"], page[-1]["event_id"]) if len(rows) > limit else None,
    }


@router.get("/customers/lookup", summary="The single view of the customer with one identifier (issue 14)",
            response_model=dict[str, Any])
def lookup_customer(res: Res, email: str | None = None, phone: str | None = None,
                    id: Annotated[str | None, Query(description="an account id (customer.id)")] = None,  # noqa: A002
                    ) -> Response:
    return live_view(res, identity.by_one_identifier(res, email, phone, id))


@router.get("/customers/{customer_id:path}", summary="The single view of one customer (contract §3, §5)",
            response_model=dict[str, Any])
def get_customer(customer_id: CustomerId, request: Request, res: Res, as_of: AsOf = None, known_at: KnownAt = None,
                 by: By = None) -> Response:
    point = point_in_time(as_of, known_at)
    customer_id = params.text("customer_id", customer_id)
    if point is not None:
        view = view_at(res, customer_id, point)
        return Response(orjson.dumps(view), media_type="application/json")
    if by is None:
        with res.pool.connection() as conn:
            found = customer_view(conn, customer_id, utc_now())
        if found is not None:
            return Response(orjson.dumps(found), media_type="application/json")
    return live_view(res, identity.canonical(res, request, customer_id, by))


def live_view(res: Res, customer_id: str) -> Response:
    """The customer's view now, from the read models; 404 when they have no row of it (yet)."""
    with res.pool.connection() as conn:
        view = customer_view(conn, customer_id, utc_now())
    if view is None:
        raise not_found(customer_id)
    # Serialised here with orjson: the same JSON as FastAPI's encoder gives (compact, UTF-8), without
    # validating a dict against `dict[str, Any]` and encoding it a second time.
    return Response(orjson.dumps(view), media_type="application/json")


def view_at(res: Res, customer_id: str, point: PointInTime) -> dict[str, Any]:
    """The contract §3 JSON of one customer at a point in time (§5), from the event store."""
    views = res.point_in_time
    fold = fold_at(res, customer_id, point)
    return view_of(view_row(views.customer_360_rows(fold), fold.interval_at(point.at), fold.identity))


def view_from_events(views: PointInTimeViews, events: Sequence[Customer.Interaction], point: PointInTime,
                     identity: IdentityAt | None = None) -> dict[str, Any]:
    """The contract §3 JSON of one customer from the events `point` admits (at least one), evaluated
    at `point.at`, with who it was then (`identity`)."""
    fold = views.fold_of(events)
    fold.identity = identity
    return view_of_fold(fold, point)


def view_of_fold(fold: CustomerFold, point: PointInTime) -> dict[str, Any]:
    """The contract §3 JSON of one customer from the read models' fold of its events at `point`."""
    return view_of(view_row(fold.customer_360_rows(), fold.interval_at(point.at), fold.identity))


# One statement, so one snapshot and one round trip (psycopg prepares it after a few uses): the
# customer's row, its revenue per currency and skus as arrays, the lifecycle interval holding now, and
# its identity (its identifiers and refused links, from the event store's identity tables).
# Every part is an index range of this customer's rows.
VIEW_SQL = (
    "SELECT c.*, r.currencies, r.revenues, r.orders, p.skus, l.stage, l.since, ident.identifiers, refusal.refused, "  # noqa: S608 - names from constants
    "v.segment, v.p_alive, v.expected_purchases_12m, v.clv_12m, v.model_currency, v.model_version "
    f"FROM {customer_360.CUSTOMERS.name} c "
    f"LEFT JOIN {value.SCORES} v ON v.customer_id = c.customer_id "
    "LEFT JOIN LATERAL (SELECT array_agg(currency ORDER BY currency) AS currencies, "
    "array_agg(revenue ORDER BY currency) AS revenues, array_agg(orders ORDER BY currency) AS orders "
    f"FROM {customer_360.REVENUE.name} WHERE customer_id = c.customer_id) r ON true "
    f"LEFT JOIN LATERAL (SELECT array_agg(sku ORDER BY sku) AS skus FROM {customer_360.PRODUCTS.name} "
    "WHERE customer_id = c.customer_id) p ON true "
    # Intervals never overlap, and those after the one holding now are the few that time alone will
    # bring: read from the latest backwards, a customer with thousands of intervals costs no more.
    f"LEFT JOIN LATERAL (SELECT stage, since FROM {lifecycle.INTERVALS.name} "
    "WHERE customer_id = c.customer_id AND during @> %(now)s::timestamptz ORDER BY seq DESC LIMIT 1) l ON true "
    + identity.IDENTITY_JOINS +
    "WHERE c.customer_id = %(id)s"
)


def customer_view(conn: Any, customer_id: str, now: datetime) -> dict[str, Any] | None:
    """The contract §3 JSON of one customer, or None if unknown (`conn` gives dict rows).
    The stage is the lifecycle read model's interval holding now: a customer with 100,000
    events answers like any other."""
    row = conn.execute(VIEW_SQL, {"id": customer_id, "now": now}).fetchone()
    return None if row is None else view_of(row)


def view_row(rows: dict[str, list[list[Any]]], current: StageInterval | None, identity: IdentityAt | None) -> dict[str, Any]:
    """The row `VIEW_SQL` gives, from one customer's rows of the `customer_360` tables (in key
    order, as the read model stores them), the lifecycle interval holding at the view's moment and
    who the customer was then."""
    [customer] = rows[customer_360.CUSTOMERS.name]
    revenue, products = customer_360.REVENUE, customer_360.PRODUCTS
    currency, amount, orders = (revenue.position(c) for c in ("currency", "revenue", "orders"))
    sku = products.position("sku")
    return {
        **dict(zip(customer_360.CUSTOMERS.column_names, customer, strict=True)),
        "currencies": [r[currency] for r in rows[revenue.name]],
        "revenues": [r[amount] for r in rows[revenue.name]],
        "orders": [r[orders] for r in rows[revenue.name]],
        "skus": [r[sku] for r in rows[products.name]],
        "stage": current.stage.value if current else None,
        "since": current.since if current else None,
        "identifiers": [str(x) for x in identity.identifiers] if identity else None,
        "refused": [{"identifier": str(r.link.other), "owner": owner, "reason": r.reason, "event_id": r.link.event_id,
                     "occurred_at": r.link.occurred_at} for r, owner in identity.refusals] if identity else None,
    }


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
        "identity": identity.identity_json(row.get("identifiers"), row.get("refused"), row["emails"], row["phones"]),
        "value": {
            "historical": {currency: format_money(amount) for currency, amount, _ in revenue},
            "p_alive": row.get("p_alive"),
            "expected_purchases_12m": row.get("expected_purchases_12m"),
            "clv_12m": {row["model_currency"]: format_money(row["clv_12m"])} if row.get("clv_12m") is not None else None,
            "model_version": row.get("model_version"),
        },
        "segment": row.get("segment"),
    }
