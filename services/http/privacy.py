"""Erasure over HTTP (issue 15; admin): `POST /customers/{id}/forget`, as `rapport customers forget`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from services.http.auth import ADMIN
from services.http.resources import Res

router = APIRouter(tags=["privacy (admin)"], dependencies=[ADMIN])


class Forget(BaseModel):
    reason: str = Field("", max_length=1000, description="why, kept with the erasure (e.g. a request's ticket number)")


@router.post("/customers/{customer_id:path}/forget",
             summary="Forget a customer (GDPR art. 17): destroy its key, remove its personal data everywhere (admin)")
def forget(customer_id: str, body: Forget, res: Res) -> dict[str, Any]:
    """Destroys the keys the customer's personal fields were sealed with, records the erasure on its
    streams, and removes its name, emails, phones and free text from every read model at once. Counts,
    revenue, scores, lifecycle and the hash chains stay. Cannot be undone."""
    from services import privacy

    try:
        return privacy.forget(res.store, res.settings, customer_id, body.reason, wait_seconds=10).as_json()
    except privacy.ForgetRequestError as error:
        raise HTTPException(404, str(error)) from None
