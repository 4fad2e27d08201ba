"""Identity resolution in ingest: what a batch's events say about who is who, decided by
`domain.identity` and stored with the batch (`eventstore.identity`).

Most events say nothing new: a customer's later events repeat identifiers already linked, at a later
event time. Those cost a look into a cache of known links. An event that makes a new link (or an
earlier one) has the stored state of the identifiers it touches read (`IdentityTables.closure`),
the customers resolved again with the new links (`decide`), and the change written in the batch's
transaction, together with the identity events it records on the customers' streams
(`Customer.IdentifiersJoined`, `IdentifiersLeft`, `LinkRefused`). The write checks the versions of
the customers the decision read; if another ingest process changed one meanwhile, the batch is
decided again (`consumers.ingest`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from domain.customer import Customer, customer_id_for, identity_change
from domain.identity import Decision, Identifier, Link, Separation, decide
from eventstore.identity import IdentityState, IdentityTables, IdentityWrites

Pair = tuple[Identifier, Identifier | None]


@dataclass
class IdentityPlan:
    """What a batch stores about identity: the writes, and the events (built once stream versions are known)."""

    writes: IdentityWrites = field(default_factory=IdentityWrites)
    decision: Decision | None = None
    links: dict[Pair, Link] = field(default_factory=dict)  # the new links it stores
    owners_before: dict[Identifier, str] = field(default_factory=dict)

    def owner(self, x: Identifier) -> str:
        """The identifier's customer once the plan is stored."""
        assert self.decision is not None
        return self.decision.owners.get(x) or self.owners_before[x]

    def events(self, versions: dict[UUID, int], stored_versions: Callable[[Iterable[UUID]], dict[UUID, int]],
               reason: str = "link") -> list[Any]:
        """The identity events of the decision, each on its customer's stream after `versions`
        (the batch's own facts; other streams from `stored_versions`); `versions` is advanced."""
        decision = self.decision
        if decision is None:
            return []
        wanted: list[tuple[str, type[Customer.IdentityChange], dict[str, Any]]] = []
        for move in decision.moves:
            cause = _cause_fields(move.cause, reason)
            identifiers = [str(x) for x in move.identifiers]
            wanted.append((move.target, Customer.IdentifiersJoined, {"identifiers": identifiers, "source": move.source,
                                                                     **cause}))
            wanted.append((move.source, Customer.IdentifiersLeft, {
                "identifiers": identifiers, "target": move.target, "merged": move.source in decision.merged, **cause}))
        for refusal in decision.refusals:
            link = refusal.link
            assert link.other is not None
            wanted.append((self.owner(link.anchor), Customer.LinkRefused, {
                "identifier": str(link.other), "owner": self.owner(link.other),
                "why": refusal.reason, **_cause_fields(link, reason)}))
        streams = {customer_id_for(customer) for customer, _, _ in wanted}
        missing = [s for s in streams if s not in versions]
        versions.update(stored_versions(missing))
        events: list[Any] = []
        for customer, event_class, fields in wanted:
            stream = customer_id_for(customer)
            if stream not in versions:  # a customer's first stream event: it is registered first
                registered = Customer(customer)
                events.extend(registered.collect_events())
                versions[stream] = registered.version
            events.append(identity_change(event_class, stream, versions[stream], customer_id=customer, **fields))
            versions[stream] += 1
        return events


def _cause_fields(cause: Link | None, reason: str) -> dict[str, Any]:
    return {"cause_event_id": cause.event_id if cause else None,
            "cause_occurred_at": cause.occurred_at if cause else None, "reason": reason}


class IdentityResolver:
    """Plans the identity writes of ingest's batches; remembers the links known to be stored."""

    def __init__(self, tables: IdentityTables, connection: Callable[[], Any], links_kept: int = 200_000) -> None:
        self.tables = tables
        self.connection = connection  # a context manager giving a connection of the event store
        self._known: dict[Pair, tuple[datetime, str]] = {}  # stored links: earliest (occurred_at, event_id)
        self._links_kept = links_kept

    def plan(self, batch: Sequence[tuple[Sequence[Identifier], datetime, str]]) -> IdentityPlan:
        """The identity writes of a batch of events, each given as (identifiers, occurred_at, event_id)."""
        known = self._known
        earliest: dict[Pair, tuple[datetime, str]] = {}  # links not known to be stored by then
        for identifiers, occurred_at, event_id in batch:
            anchor, moment = identifiers[0], (occurred_at, event_id)
            for other in (None, *identifiers[1:]):
                key = (anchor, other)
                stored = known.get(key)
                if stored is not None and stored <= moment:
                    continue  # nearly every event: its links are stored, as early or earlier
                first = earliest.get(key)
                if first is None or moment < first:
                    earliest[key] = moment
        if not earliest:
            return IdentityPlan()
        with self.connection() as conn:
            known.update(self.tables.known_links(conn, [k for k in earliest if k not in known]))
            new = [Link(*moment, *key) for key, moment in earliest.items() if key not in known or moment < known[key]]
            if not new:
                return IdentityPlan()
            state = self.tables.closure(conn, {x for link in new for x in (link.anchor, link.other) if x})
        return plan_from(state, new)

    def stored(self, plan: IdentityPlan) -> None:
        """The plan's batch was stored: its links are known now."""
        for key, link in plan.links.items():
            self._known.pop(key, None)
            self._known[key] = link.moment
        excess = len(self._known) - self._links_kept
        if excess > 0:
            for key in list(self._known)[:excess + self._links_kept // 10]:
                del self._known[key]

    def forget(self) -> None:
        self._known.clear()


def plan_from(state: IdentityState, new_links: Sequence[Link], separations_after: Sequence[Separation] | None = None,
              recorded_at: datetime | None = None) -> IdentityPlan:
    """The plan that stores `new_links` (and `separations_after`, an operator's) over a stored closure."""
    links_before = list(state.links.values())
    merged_links = dict(state.links)
    for link in new_links:
        key = (link.anchor, link.other)
        if key not in merged_links or link.moment < merged_links[key].moment:
            merged_links[key] = link
    decision = decide(state.owners, links_before, list(merged_links.values()), state.separations,
                      separations_after, new_links)
    now = recorded_at or datetime.now(UTC)
    # An operator's separation changes the customers of both its sides, whatever moves.
    separated = {state.owners[x] for s in set(separations_after or ()) ^ set(state.separations) for x in (s.a, s.b)
                 if x in state.owners} if separations_after is not None else set()
    writes = IdentityWrites(
        expected=dict(state.versions), changed=set(decision.changed) | separated, created=set(decision.created),
        merged=dict(decision.merged),
        new_identifiers=[(x, decision.owners[x], customer_id_for(x.value)) for x in decision.new],
        moved_identifiers=[(x, m.target, m.source) for m in decision.moves for x in m.identifiers],
        links=[(link, now) for link in new_links],
        refusals=list(decision.refusals),
    )
    return IdentityPlan(writes, decision, {(link.anchor, link.other): link for link in new_links}, dict(state.owners))
