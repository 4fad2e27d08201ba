"""Audit (contract §5): `GET /audit/customers/{id}/events`, `GET /audit/verify`, `GET /audit/heads`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from services import audit
from services.http import params
from services.http.auth import AUDITOR
from services.http.customers import not_found
from services.http.resources import Res

router = APIRouter(tags=["audit"], dependencies=[AUDITOR])


@router.get("/audit/customers/{customer_id:path}/events",
            summary="A customer's stored events in stream order, with their hash chain (contract §5)")
def get_customer_events(
    customer_id: Annotated[str, Path(min_length=1, description="the customer.id, else the email, else the phone")],
    res: Res,
    limit: Annotated[int, Query(ge=1, le=10_000, description="events per page")] = 1000,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> dict[str, Any]:
    customer_id = params.text("customer_id", customer_id)
    after = params.decode_cursor(cursor, int)
    with res.pool.connection() as conn:
        items = audit.customer_events(conn, customer_id, after=after[0] if after else 0, limit=limit + 1)
    if items is None:
        raise not_found(customer_id)
    page = items[:limit]
    return {"customer_id": customer_id, "items": page,
            "next_cursor": params.encode_cursor(page[-1]["position"]) if len(items) > limit else None}


@router.get("/audit/verify", summary="Re-check every hash chain, or one customer's (contract §5)")
def get_verify(
    res: Res,
    customer: Annotated[str | None, Query(description="check only this customer's chain")] = None,
) -> dict[str, Any]:
    if customer is not None:
        customer = params.text("customer", customer)
    result = audit.verify(res.pool, customer)
    if customer is not None and result.streams_checked == 0:
        raise not_found(customer)
    return result.as_json()


@router.get("/audit/heads", summary="The digest of every chain head, to keep outside the database")
def get_heads(res: Res) -> dict[str, Any]:
    with res.pool.connection() as conn:
        heads = list(audit.heads(conn))
    if any(h["hash"] is None for h in heads):
        raise HTTPException(409, "some stored events have no hash (written outside Rapport's ingest): "
                                 "GET /audit/verify names them")
    return {"streams": len(heads), "events": sum(h["position"] for h in heads),
            "digest": audit.heads_digest(heads),
            "how": "`rapport audit heads --output FILE` writes every head; keep the file (or this digest) outside "
                   "the database and check it later with `rapport audit verify --heads FILE`"}
