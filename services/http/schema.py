"""`GET /schema/envelope.json`: the envelope's JSON Schema (contract §1) for producers and their tools,
the same document as `contract/envelope.schema.json` in the repository (services/contract_files.py)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from services.contract_files import envelope_schema_text

SCHEMA_MEDIA_TYPE = "application/schema+json"

router = APIRouter(tags=["contract"])


@router.get(
    "/schema/envelope.json",
    summary="The JSON Schema (draft 2020-12) of one event envelope, to validate messages before publishing them",
    response_class=Response,
    responses={200: {"content": {SCHEMA_MEDIA_TYPE: {"schema": {"type": "object"}}},
                     "description": "The schema, as contract/envelope.schema.json holds it."}},
)
async def envelope_json_schema() -> Response:
    return Response(content=envelope_schema_text(), media_type=SCHEMA_MEDIA_TYPE)
