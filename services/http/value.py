"""Customer value and segments (contract §6): the value model, CLV by cohort and its distribution,
and RFM segments as of any moment (`services.value` holds the queries)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from domain import segments as segment_rules
from domain.contract import utc_now
from services import value
from services.http import params
from services.http.auth import ANALYST
from services.http.resources import Res

router = APIRouter(tags=["value"], dependencies=[ANALYST])


class FitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    calibration_end: str = Field(description="RFC 3339 time or date: the model is fitted on purchases up to it")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217: purchases in this currency only")
    source: str | None = Field(None, min_length=1, max_length=200,
                               description="only purchases this system published (the events' `source`)")


def no_model() -> HTTPException:
    return HTTPException(404, "no value model yet: fit one with POST /value/model/fit "
                              '{"calibration_end": "...", "currency": "USD"} or `rapport value fit`')


@router.post("/value/model/fit", status_code=201, summary="Fit BG/NBD and Gamma-Gamma on the purchases up to a "
                                                          "moment, store it as a new version (contract §6)")
def fit_model(request: FitRequest, res: Res) -> dict[str, Any]:
    """Fits on the purchases in `currency` (of `source` only, when given) with `occurred_at` ≤
    `calibration_end`, stores the model as a new version, and scores every customer with it before
    answering: `GET /customers/{id}` shows the new version as soon as this returns."""
    calibration_end = params.instant("calibration_end", request.calibration_end)
    if request.source is not None:
        params.text("source", request.source)
    settings = res.settings
    with res.pool.connection() as conn:
        try:
            model = value.fit_and_rescore(conn, calibration_end, request.currency, request.source,
                                          settings.value_currency, settings.value_discount_rate, utc_now())
        except value.ValueRequestError as error:
            raise HTTPException(422, str(error)) from None
    return value.model_json(model, params.rfc3339)


@router.get("/value/model", summary="The latest value model (contract §6); 404 before the first fit")
def get_model(res: Res) -> dict[str, Any]:
    with res.pool.connection() as conn:
        model = value.latest_model(conn)
    if model is None:
        raise no_model()
    return value.model_json(model, params.rfc3339)


@router.get("/value/cohorts", summary="Customer value by acquisition cohort: month of the first purchase")
def get_cohorts(res: Res) -> dict[str, Any]:
    """Per UTC month of customers' first purchase (in the latest model's currency): customers,
    revenue to date, predicted 12-month CLV in all and per customer, and the average probability
    alive; from the scores of the latest refresh."""
    with res.pool.connection() as conn:
        model = value.latest_model(conn)
        if model is None:
            raise no_model()
        rows = value.cohorts(conn)
    return {"currency": model.currency, "model_version": model.version, "cohorts": [{
        "cohort": r["cohort"], "customers": r["customers"], "historical": value.money(r["historical"]),
        "clv_12m": value.money(r["clv_12m"] or Decimal(0)),
        "clv_12m_per_customer": value.money((r["clv_12m"] or Decimal(0)) / r["customers"]),
        "p_alive": round(float(r["p_alive"]), 4) if r["p_alive"] is not None else None,
    } for r in rows]}


@router.get("/value/distribution", summary="Customers by predicted 12-month CLV")
def get_distribution(res: Res, buckets: Annotated[int, Query(ge=2, le=100, description="number of ranges")] = 10,
                     ) -> dict[str, Any]:
    """Customers in `buckets` equal ranges of predicted 12-month CLV from 0 to the 99th percentile;
    the last range (`to` null) holds everything above."""
    with res.pool.connection() as conn:
        model = value.latest_model(conn)
        if model is None:
            raise no_model()
        found = value.distribution(conn, buckets)
    return {"currency": model.currency, "model_version": model.version, "buckets": found}


SegmentName = Annotated[str, Path(description="one of: " + ", ".join(segment_rules.SEGMENTS))]


@router.get("/segments", summary="Customers and revenue per RFM segment as of a moment (contract §6)")
def get_segments(res: Res, as_of: Annotated[str | None, Query(description="RFC 3339 time or date; default now")] = None,
                 ) -> dict[str, Any]:
    """Every segment, in a fixed order, empty ones too. Customers with purchases in
    `RAPPORT_VALUE_CURRENCY` by `as_of` are ranked among themselves (README, Customer value).
    Without `as_of`: the segments of the latest refresh of the customers' scores (the view's), and
    `as_of` says when that was; ranked now if no refresh has run."""
    settings = res.settings
    with res.pool.connection() as conn:
        scored = value.scored_segments(conn, settings.value_currency) if as_of is None else None
        if scored is not None:
            at, found = scored
        else:
            at = params.instant("as_of", as_of)
            found = value.segment_counts(conn, settings.value_currency, at)
    return {"as_of": params.rfc3339(at), "currency": settings.value_currency, "segments": found}


@router.get("/segments/{name}/customers", summary="The members of a segment as of a moment, paged (contract §6)")
def get_segment_customers(
    name: SegmentName,
    res: Res,
    as_of: Annotated[str | None, Query(description="RFC 3339 time or date; default now")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> dict[str, Any]:
    if name not in segment_rules.SEGMENTS:
        raise HTTPException(404, f"no segment {name!r}; the segments are: {', '.join(segment_rules.SEGMENTS)}")
    after = params.decode_cursor(cursor, str, datetime)
    start, paged_at = after if after else (None, None)
    settings = res.settings
    with res.pool.connection() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")  # the moment and the rows agree
        scored = value.scored_at(conn, settings.value_currency) if as_of is None else None
        if scored is not None:  # the latest refresh's members, as GET /segments without as_of counts them
            at = scored
            rows = value.scored_members(conn, settings.value_currency, name, start, limit + 1)
            if paged_at is not None and paged_at != at:
                raise HTTPException(409, f"the segments were scored again ({params.rfc3339(at)}) since the first page "
                                         f"({params.rfc3339(paged_at)}): start again without `cursor`, or page with "
                                         f"as_of={params.rfc3339(paged_at)} for that moment")
        else:
            at = params.instant("as_of", as_of) if as_of is not None else (paged_at or utc_now())
            if as_of is not None and paged_at is not None and paged_at != at:
                raise params.bad("cursor", "was given for another as_of: pass the `as_of` of the first page with it")
            rows = value.segment_members(conn, settings.value_currency, at, name, start, limit + 1)
    page = rows[:limit]
    return {
        "as_of": params.rfc3339(at), "segment": name,
        "items": [member_json(r, settings.value_currency) for r in page],
        "next_cursor": params.encode_cursor(page[-1]["customer_id"], at) if len(rows) > limit else None,
    }


def member_json(row: dict[str, Any], currency: str) -> dict[str, Any]:
    last: datetime = row["last_purchase_at"]
    return {"customer_id": row["customer_id"], "recency_days": row["recency_days"], "frequency": row["frequency"],
            "monetary": {currency: value.money(row["monetary"])}, "r": row["r_score"], "f": row["f_score"],
            "m": row["m_score"], "last_purchase_at": params.rfc3339(last)}
