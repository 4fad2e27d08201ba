"""Key management over HTTP (issue 15; admin): the same as `rapport keys create|list|revoke`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from services import access
from services.http.auth import ADMIN
from services.http.resources import Res

router = APIRouter(tags=["keys (admin)"], dependencies=[ADMIN])


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="who or what uses the key, e.g. 'pbx-01'")
    roles: list[str] = Field(min_length=1, description="one or more of: " + ", ".join(r.value for r in access.Role))


@router.post("/keys", status_code=201, summary="Make a key; its text is in this answer only (admin)")
def create_key(body: NewKey, res: Res) -> dict[str, Any]:
    try:
        with res.pool.connection() as conn:
            key, text = access.create_key(conn, body.name, body.roles)
    except access.KeyRequestError as error:
        raise HTTPException(422, str(error)) from None
    return {**key.as_json(), "key": text}


@router.get("/keys", summary="The keys, revoked ones included, without their secrets (admin)")
def list_keys(res: Res) -> dict[str, Any]:
    with res.pool.connection() as conn:
        return {"items": [key.as_json() for key in access.list_keys(conn)]}


@router.post("/keys/{key_id}/revoke", summary="Revoke a key: it stops working within seconds (admin)")
def revoke_key(key_id: str, res: Res) -> dict[str, Any]:
    try:
        with res.pool.connection() as conn:
            return access.revoke_key(conn, key_id).as_json()
    except access.KeyRequestError as error:
        raise HTTPException(404, str(error)) from None
