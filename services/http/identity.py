"""Finding a customer by any of its identifiers (issue 14): `GET /customers/{key}` takes the
customer's id, or any email, phone or account id of it (`?by=` says which when the key could be
either), and answers with the customer's own id; an id merged into another answers `308` with the
survivor's URL. `GET /customers/lookup?email=|phone=|id=` does the same by one named identifier.
The identity tables are the event store's (`eventstore.identity`), written with the events."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request
from psycopg.sql import SQL
from pydantic import BaseModel, Field

from domain.identity import (
    DEFAULT_REGION,
    Identifier,
    UnreadableIdentifier,
    for_matching,
    identifier,
    in_kind_order,
    named_by,
)
from eventstore import tables
from eventstore.identity import IdentityTables, parse_identifier
from services.http.auth import ADMIN
from services.http.params import rfc3339
from services.http.resources import Res

TABLES = IdentityTables("public")

By = Annotated[Literal["id", "email", "phone"] | None, Query(
    description="which identifier the key is: an account id (`id`), an `email` or a `phone`; by default the "
                "customer's own id, else an email if it holds '@', else a phone if it reads as one")]


def redirect_to(request: Request, survivor: str, merged: str) -> HTTPException:
    """308 to the same route of the customer `merged` was merged into, with the same parameters."""
    path = request.url.path
    prefix = "/customers/"
    rest = path[len(prefix):]
    suffix = next((s for s in ("/lifecycle", "/timeline") if rest.endswith(s)), "")
    location = f"{prefix}{quote(survivor, safe='')}{suffix}" + (f"?{request.url.query}" if request.url.query else "")
    return HTTPException(308, f"customer {merged!r} was merged into {survivor!r}; it is found at {location}",
                         headers={"Location": location})


def customer_id_of(conn: Any, key: str, by: str | None, region: str) -> tuple[str | None, str | None]:
    """(the customer the key names now, or None; the customer it was merged into, or None)."""
    if by in (None, "id"):
        row = conn.execute(SQL("SELECT merged_into FROM {} WHERE customer_id = %s").format(TABLES.customers),
                           (key,)).fetchone()
        if row is not None:
            merged_into = row["merged_into"]
            return (key, None) if merged_into is None else (None, TABLES.redirect(conn, key))
    for kind in ([by] if by else guessed_kinds(key)):
        try:
            wanted = for_matching(identifier(kind, key, region), _DISPLAY["key"])
        except UnreadableIdentifier as error:
            if by:
                raise HTTPException(422, f"by={by}: {error.reason}") from None
            continue
        owner = TABLES.customer_of(conn, [wanted]).get(wanted)
        if owner is not None:
            return owner, None
    return (key if by in (None, "id") else None), None  # a customer of a store from before identities, or unknown


def guessed_kinds(key: str) -> list[str]:
    if "@" in key:
        return ["email"]
    if any(c.isdigit() for c in key) and all(c.isdigit() or c in "+-() ." for c in key):
        return ["phone", "id"]
    return ["id"]


def canonical(res: Res, request: Request, key: str, by: str | None) -> str:
    """The id of the customer `key` names (404 and 308 raised here)."""
    with res.pool.connection() as conn:
        customer_id, survivor = customer_id_of(conn, key, by, res.settings.default_phone_region)
    if survivor is not None:
        raise redirect_to(request, survivor, key)
    if customer_id is None:
        raise HTTPException(404, f"no customer has the {by} {key!r}")
    return customer_id


def by_one_identifier(res: Res, email: str | None, phone: str | None, account: str | None) -> str:
    """The customer with the one identifier given (`GET /customers/lookup`); 404 or 422 raised here."""
    given = {k: v for k, v in (("email", email), ("phone", phone), ("id", account)) if v is not None}
    if len(given) != 1:
        raise HTTPException(422, "give exactly one of email=, phone=, id= (the identifier to look the customer up by)")
    (kind, value), = given.items()
    try:
        plain: Identifier = identifier(kind, value, res.settings.default_phone_region)
    except UnreadableIdentifier as error:
        raise HTTPException(422, f"{kind}: {error.reason}") from None
    wanted = for_matching(plain, _DISPLAY["key"])
    with res.pool.connection() as conn:
        owner = TABLES.customer_of(conn, [wanted]).get(wanted)
    if owner is None:
        raise HTTPException(404, f"no customer has the {kind} {plain.value!r}")
    return owner


# The identity part of the customer view: its identifiers now, and the links its events asked for
# and did not get (with the customer that keeps the other identifier, why, and which event asked).
_IDENTIFIERS, _REFUSALS = (f'"public"."{name}"' for name in (tables.IDENTIFIERS, tables.IDENTITY_REFUSALS))
IDENTITY_JOINS = (
    f"LEFT JOIN LATERAL (SELECT array_agg(identifier) AS identifiers FROM {_IDENTIFIERS} "  # noqa: S608 - names from constants
    "WHERE customer_id = c.customer_id) ident ON true "
    "LEFT JOIN LATERAL (SELECT jsonb_agg(jsonb_build_object('identifier', r.other, 'owner', o.customer_id, "
    "'reason', r.why, 'event_id', r.event_id, 'occurred_at', r.occurred_at) ORDER BY r.occurred_at, r.event_id) "
    f"AS refused FROM {_REFUSALS} r JOIN {_IDENTIFIERS} a ON a.identifier = r.anchor "
    f"LEFT JOIN {_IDENTIFIERS} o ON o.identifier = r.other "
    "WHERE a.customer_id = c.customer_id AND o.customer_id IS DISTINCT FROM c.customer_id) refusal ON true "
)

REASONS = {"two ids": "two customer ids are never merged", "separated": "an operator separated them (unmerge)"}


# Identity resolution keeps emails and phones as keyed hashes (`domain.identity.for_matching`); a view
# names them from the customer's own emails and phones, hashed with the same key. Set by the API and the
# commands that render views; unset, or for values the customer's events no longer hold (a forgotten
# customer's), the hash is shown.
_DISPLAY: dict[str, Any] = {"key": None, "region": DEFAULT_REGION}


def name_identifiers_with(key: bytes, region: str) -> None:
    _DISPLAY.update(key=key, region=region)


def _names(emails: Iterable[str] | None, phones: Iterable[str] | None) -> dict[str, str]:
    """Each of these emails and phones as identity resolution stores it (`kind:#hash`) → its normal form."""
    if _DISPLAY["key"] is None:
        return {}
    written = [*(("email", e) for e in emails or ()), *(("phone", p) for p in phones or ())]
    return named_by(written, _DISPLAY["region"], _DISPLAY["key"])


def identity_json(identifiers: Iterable[str] | None, refused: Iterable[dict[str, Any]] | None,
                  emails: Iterable[str] | None = None, phones: Iterable[str] | None = None) -> dict[str, Any]:
    """The view's `identity`: its identifiers (`kind:value`, normal form; `kind:#hash` where the customer's own
    emails and phones no longer name it) and its refused links."""
    names = _names(emails, phones)
    return {
        "identifiers": [str(x) for x in in_kind_order(parse_identifier(names.get(t, t)) for t in identifiers or ())],
        "refused_links": [{**r, "identifier": names.get(r["identifier"], r["identifier"]),
                           "reason": REASONS.get(r["reason"], r["reason"]),
                           "occurred_at": rfc3339(datetime.fromisoformat(r["occurred_at"]))
                           if isinstance(r["occurred_at"], str) else rfc3339(r["occurred_at"])} for r in refused or ()],
    }


# -- an operator's corrections (services.identities) ---------------------------------------------
router = APIRouter(tags=["identity (admin)"], dependencies=[ADMIN])


class Correction(BaseModel):
    identifier: str = Field(description="kind:value, e.g. email:ana@example.com, phone:+94771234567, id:crm-42")
    reason: str = Field("", max_length=1000, description="why (kept with the separation), e.g. a ticket number")


def _correct(action: str, customer_id: str, body: Correction, res: Res) -> dict[str, Any]:
    from services import identities

    try:
        if action == "unmerge":
            done = identities.unmerge(res.store, customer_id, body.identifier, res.settings.default_phone_region,
                                      body.reason, key=res.settings.matching_key())
        else:
            done = identities.allow(res.store, customer_id, body.identifier, res.settings.default_phone_region,
                                    key=res.settings.matching_key())
    except identities.IdentityRequestError as error:
        raise HTTPException(422, str(error)) from None
    return done.as_json()


@router.post("/customers/{customer_id:path}/unmerge", summary="Split a wrong merge (issue 14; admin)")
def unmerge(customer_id: str, body: Correction, res: Res) -> dict[str, Any]:
    """Splits the identifier, with what came only through it and their events, off the customer, for
    good (later links are refused until `allow`); recorded as events; every read model follows."""
    return _correct("unmerge", customer_id, body, res)


@router.post("/customers/{customer_id:path}/allow", summary="Lift an unmerge (issue 14; admin)")
def allow(customer_id: str, body: Correction, res: Res) -> dict[str, Any]:
    """The links events made between the identifier and the customer count again."""
    return _correct("allow", customer_id, body, res)
