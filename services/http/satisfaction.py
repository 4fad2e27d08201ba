"""Satisfaction for analysts (contract §3, §3b): the NPS/CSAT trend, alarm answers to call back,
and revenue by NPS category. Queries over the satisfaction read model (and customer_360 for
names, revenue and last contact)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query

from domain.contract import utc_now
from domain.rules import MONEY_CONTEXT, format_money, nps_category
from domain.satisfaction import CHANNELS, NPS_CATEGORIES, nps, per_customer, share_percent
from projections import customer_360, satisfaction
from services.http import params
from services.http.auth import ANALYST
from services.http.resources import Res

router = APIRouter(tags=["satisfaction"], dependencies=[ANALYST])


class Kind(StrEnum):
    nps = "nps"
    csat = "csat"


class Granularity(StrEnum):
    day = "day"
    week = "week"
    month = "month"


Channel = StrEnum("Channel", {c: c for c in CHANNELS})  # type: ignore[misc]


@router.get("/satisfaction/trend", summary="NPS or CSAT per day, ISO week or month (contract §3, §3b)")
def get_trend(
    res: Res,
    kind: Kind = Kind.nps,
    granularity: Granularity = Granularity.week,
    from_: Annotated[str | None, Query(alias="from", description="first day, inclusive (a date or midnight UTC); "
                                                                  "default one year before `to`")] = None,
    to: Annotated[str | None, Query(description="last day, exclusive; default tomorrow (UTC)")] = None,
    channel: Annotated[Channel | None, Query(description="only answers about this channel; default all")] = None,
) -> dict[str, Any]:
    end = params.day("to", to, default=utc_now().date() + timedelta(days=1))
    start = params.day("from", from_, default=params.before(end, timedelta(days=365)))
    if start >= end:
        raise params.bad("from", f"must be before `to` ({start} is not before {end})")
    where = "kind = %s AND day >= %s AND day < %s" + (" AND channel = %s" if channel else "")
    with res.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT date_trunc(%s, day)::date AS period_start, sum(responses) AS responses, "  # noqa: S608 - names from constants
            "sum(score_sum) AS score_sum, sum(promoters) AS promoters, sum(passives) AS passives, "
            f"sum(detractors) AS detractors, sum(satisfied) AS satisfied FROM {satisfaction.DAYS.name} "
            f"WHERE {where} GROUP BY 1 HAVING sum(responses) > 0 ORDER BY 1",
            (granularity.value, kind.value, start, end, *([channel.value] if channel else [])),
        ).fetchall()
    return {"kind": kind.value, "granularity": granularity.value, "from": start.isoformat(), "to": end.isoformat(),
            "channel": channel.value if channel else None, "points": [trend_point(kind, r) for r in rows]}


def trend_point(kind: Kind, row: dict[str, Any]) -> dict[str, Any]:
    responses = int(row["responses"])
    point: dict[str, Any] = {"period_start": row["period_start"].isoformat(), "responses": responses,
                             "average": round(int(row["score_sum"]) / responses, 2)}
    if kind is Kind.nps:
        promoters, detractors = int(row["promoters"]), int(row["detractors"])
        point |= {"promoters": promoters, "passives": int(row["passives"]), "detractors": detractors,
                  "nps": nps(promoters, detractors, responses)}
    else:
        point["csat"] = share_percent(int(row["satisfied"]), responses)
    return point


@router.get("/satisfaction/alarms", summary="Customers whose latest answer is an alarm, to call back (contract §3b)")
def get_alarms(
    res: Res,
    since: Annotated[str | None, Query(description="answers given at or after this time; default 30 days ago")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> dict[str, Any]:
    start = params.instant("since", since, default=utc_now() - timedelta(days=30))
    after = params.decode_cursor(cursor, datetime, str)
    latest, responses = satisfaction.LATEST.name, satisfaction.RESPONSES.name
    keyset = " AND (l.answer_at, l.answer_event_id) < (%s, %s)" if after else ""
    with res.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT l.customer_id, l.answer_kind, l.answer_score, l.answer_at, l.answer_event_id, r.channel, "  # noqa: S608 - names from constants
            f"c.name, c.last_seen_at FROM {latest} l "
            f"JOIN {responses} r ON r.customer_id = l.customer_id AND r.event_id = l.answer_event_id "
            f"LEFT JOIN {customer_360.CUSTOMERS.name} c ON c.customer_id = l.customer_id "
            f"WHERE l.answer_alarm AND l.answer_at >= %s{keyset} "
            "ORDER BY l.answer_at DESC, l.answer_event_id DESC LIMIT %s",
            (start, *(after or ()), limit + 1),
        ).fetchall()
        page = rows[:limit]
        revenue = revenue_of(conn, [r["customer_id"] for r in page])
    return {
        "items": [{
            "customer_id": r["customer_id"], "name": r["name"], "kind": r["answer_kind"], "score": r["answer_score"],
            "answered_at": params.rfc3339(r["answer_at"]), "event_id": r["answer_event_id"], "channel": r["channel"],
            "revenue": revenue.get(r["customer_id"], {}), "last_contact_at": params.rfc3339(r["last_seen_at"]),
        } for r in page],
        "next_cursor": params.encode_cursor(page[-1]["answer_at"], page[-1]["answer_event_id"])
        if len(rows) > limit else None,
    }


def revenue_of(conn: Any, customer_ids: list[str]) -> dict[str, dict[str, str]]:
    rows = conn.execute(
        f"SELECT customer_id, currency, revenue FROM {customer_360.REVENUE.name} WHERE customer_id = ANY(%s) "  # noqa: S608 - names from constants
        "ORDER BY customer_id, currency", (customer_ids,),
    ).fetchall()
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        found.setdefault(row["customer_id"], {})[row["currency"]] = format_money(row["revenue"])
    return found


@router.get("/satisfaction/revenue-by-category", summary="Revenue by the category of the latest NPS answer "
                                                           "(contract §3b)")
def get_revenue_by_category(
    res: Res,
    as_of: Annotated[str | None, Query(description="RFC 3339 time or date; default now")] = None,
) -> dict[str, Any]:
    at = params.instant("as_of", as_of)
    customers_table, responses, contacts = (satisfaction.CUSTOMERS.name, satisfaction.RESPONSES.name,
                                            satisfaction.CONTACTS.name)
    latest_nps = (
        f"SELECT DISTINCT ON (customer_id) customer_id, score FROM {responses} "  # noqa: S608 - names from constants
        "WHERE kind = 'nps' AND occurred_at <= %(at)s ORDER BY customer_id, occurred_at DESC, event_id DESC"
    )
    with res.pool.connection() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        customers = conn.execute(
            f"SELECT n.score, count(*) AS customers FROM {customers_table} s LEFT JOIN ({latest_nps}) n "  # noqa: S608 - names from constants
            "USING (customer_id) WHERE s.first_seen_at <= %(at)s GROUP BY n.score", {"at": at},
        ).fetchall()
        revenue = conn.execute(
            f"SELECT n.score, p.currency, sum(p.amount) AS revenue FROM {contacts} p LEFT JOIN ({latest_nps}) n "  # noqa: S608 - names from constants
            "USING (customer_id) WHERE p.amount IS NOT NULL AND p.occurred_at <= %(at)s GROUP BY n.score, p.currency",
            {"at": at},
        ).fetchall()
    counts = dict.fromkeys((*NPS_CATEGORIES, "none"), 0)
    for row in customers:
        counts[nps_category(row["score"]) or "none"] += row["customers"]
    sums: dict[str, dict[str, Decimal]] = {category: {} for category in counts}
    with localcontext(MONEY_CONTEXT):
        for row in revenue:
            by_currency = sums[nps_category(row["score"]) or "none"]
            by_currency[row["currency"]] = by_currency.get(row["currency"], Decimal(0)) + row["revenue"]
        return {"as_of": params.rfc3339(at), "categories": [{
            "category": category, "customers": counts[category],
            "revenue": {c: format_money(v) for c, v in sorted(sums[category].items())},
            "revenue_per_customer": {c: format_money(per_customer(v, counts[category]))
                                     for c, v in sorted(sums[category].items()) if counts[category]},
        } for category in counts]}

