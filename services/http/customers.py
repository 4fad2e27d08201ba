"""`GET /customers/{id}` (contract §3): the single view of one customer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from projections.customer_360 import fetch_customer_view
from services.http.resources import Res

router = APIRouter(tags=["customers"])


# `:path` lets customer ids hold '/'; routes under /customers/{id}/… must be declared above it.
@router.get("/customers/{customer_id:path}", summary="The single view of one customer (contract §3)")
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

