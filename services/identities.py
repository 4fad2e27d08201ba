"""An operator's corrections of identity (issue 14): split a wrong merge, or allow a link again.

`unmerge(store, CUSTOMER, IDENTIFIER)` records a separation: the identifier and the customer's
anchor (its `id:`, else the identifier its id was made from) are never one customer, until an
operator lifts it (`allow`). Identity is then resolved again over every link touching them
(`domain.identity.resolve`, the rule ingest uses), so the identifier leaves with the identifiers
that came only through it, and their events with them; later events that link them again are
refused and the refusal is kept. Both are stored as ingest stores a decision: the identity writes
and the events on the customers' streams (`reason` `unmerge` or `allow`), in one transaction,
checked against the versions read (decided again on a conflict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from consumers.identity import IdentityPlan, plan_from
from domain.customer import Customer
from domain.identity import Identifier, Separation, UnreadableIdentifier, for_matching, named_by, resolve
from eventstore.store import InteractionLog

ATTEMPTS = 5


class IdentityRequestError(ValueError):
    """What the operator asked for cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Correction:
    """What an unmerge or an allow did: each move (identifiers, from, to) and the customers merged away."""

    separation: Separation
    moves: list[tuple[list[str], str, str]]
    merged: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {"separation": [str(self.separation.a), str(self.separation.b)],
                "moves": [{"identifiers": ids, "from": source, "to": target} for ids, source, target in self.moves],
                "merged": self.merged}


def parse(text: str, region: str, key: bytes | None) -> tuple[Identifier, str]:
    """The identifier as identity resolution stores it (an email or phone as its keyed hash), and its normal form."""
    try:
        plain = Identifier.parse(text, region)
    except UnreadableIdentifier as error:
        raise IdentityRequestError(error.reason) from None
    return for_matching(plain, key), str(plain)


def names_of(store: InteractionLog, streams: set[UUID], key: bytes | None, region: str) -> dict[str, str]:
    """Each email and phone the events of these streams carry, as identity keeps it → its normal form: how an
    operator's correction names what moved (a forgotten customer's stay hashes)."""
    written = [(kind, event.customer.get(kind)) for stream in streams for event in store.events.get(stream)
               if isinstance(event, Customer.Interaction) for kind in ("email", "phone")]
    return named_by(written, region, key)


def unmerge(store: InteractionLog, customer_id: str, identifier_text: str, region: str, reason: str = "",
            key: bytes | None = None) -> Correction:
    """Split `identifier` (with what came only through it) off the customer, for good."""
    wanted, written = parse(identifier_text, region, key)
    return _correct(store, customer_id, wanted, "unmerge", reason, written, key, region)


def allow(store: InteractionLog, customer_id: str, identifier_text: str, region: str, key: bytes | None = None
          ) -> Correction:
    """Lift the separation an unmerge made between `identifier` and the customer: the links events
    made between them count again (a merge, if they still link them)."""
    wanted, written = parse(identifier_text, region, key)
    return _correct(store, customer_id, wanted, "allow", "", written, key, region)


def _correct(store: InteractionLog, customer_id: str, wanted: Identifier, action: str, reason: str,
             written: str, key: bytes | None = None, region: str = "US") -> Correction:
    tables = store.interactions.identity
    for attempt in range(1, ATTEMPTS + 1):
        with store.interactions.datastore.get_connection() as conn:
            members = [x for x, _ in tables.members(conn, customer_id)]
            if not members:
                survivor = tables.redirect(conn, customer_id)
                raise IdentityRequestError(
                    f"no customer {customer_id!r}" + (f": it was merged into {survivor!r}; give that id" if survivor else ""))
            state = tables.closure(conn, set(members) | {wanted})
        # The customer's anchor: its account id, else the identifier its id was made from.
        first_seen = resolve(list(state.links.values()), state.separations).first_seen
        anchor = next((x for x in members if x.kind == "id"), None) or min(members, key=lambda x: (first_seen[x], x))
        separation = Separation.of(wanted, anchor)
        if action == "unmerge":
            if wanted not in members:
                owner = state.owners.get(wanted)
                raise IdentityRequestError(f"{written} is not an identifier of customer {customer_id}" + (
                    f"; it is customer {owner}'s" if owner else "; no customer has it"))
            if wanted == anchor:
                raise IdentityRequestError(
                    f"{written} is what customer {customer_id} is: its "
                    f"{'account id' if wanted.kind == 'id' else 'first identifier'}"
                    "; unmerge the other identifiers from it instead")
            separations_after = [*state.separations, separation]
        else:
            if separation not in state.separations:
                raise IdentityRequestError(f"{written} and customer {customer_id} are not separated (nothing to allow)")
            separations_after = [s for s in state.separations if s != separation]
        plan = plan_from(state, [], separations_after)
        if action == "unmerge":
            plan.writes.separations_added.append((separation, reason or "unmerged by an operator"))
        else:
            plan.writes.separations_lifted.append(separation)
        events = plan.events({}, store.stream_versions, reason=action)
        try:
            store.record(events, identity_writes=plan.writes)
        except IntegrityError:
            store.forget_stream_versions()
            if attempt == ATTEMPTS:
                raise
            continue
        streams = set(store.stream_versions(set(state.streams.values())))
        return _summary(plan, separation, {**names_of(store, streams, key, region), str(wanted): written})
    raise AssertionError("unreachable")


def _summary(plan: IdentityPlan, separation: Separation, names: dict[str, str]) -> Correction:
    """What was done, the identifier the operator named as they wrote it (others as identity keeps them:
    an email or phone as its keyed hash)."""
    assert plan.decision is not None
    named = Separation(*(Identifier(*names[str(x)].partition(':')[::2]) if str(x) in names else x
                         for x in (separation.a, separation.b)))
    return Correction(named, [([names.get(str(x), str(x)) for x in m.identifiers], m.source, m.target)
                              for m in plan.decision.moves], dict(plan.decision.merged))
