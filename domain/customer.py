"""The Customer aggregate: one stream per customer, one past-tense event per business fact."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.contract import Envelope, call_data_v1_to_v2, customer_key, data_in_latest_version

# Fixed forever: customer ids are derived from it, so changing it would orphan every stream.
CUSTOMER_NAMESPACE = UUID("5d0c6e52-4a36-4f7e-9a5c-2f1f3c1f8a10")


class Customer(Aggregate):
    """Everything that happened between the business and one customer, in recorded order.

    The aggregate keeps only what it needs to decide; read models keep the rest.
    Duplicate `event_id`s are found by an index in the event store's transaction, not here,
    so that this state stays small however long the stream grows.
    """

    @staticmethod
    def create_id(customer_key: str) -> UUID:
        return customer_id_for(customer_key)

    @event("Registered")
    def __init__(self, customer_key: str) -> None:
        self.customer_key = customer_key
        self.name: str | None = None
        self.name_key: tuple[datetime, str] | None = None  # (occurred_at, event_id) of the name
        self.emails: list[str] = []
        self.phones: list[str] = []
        self.interactions = 0

    class Interaction(Aggregate.Event):
        """Base of the four interaction facts: the envelope as received, normalised to UTC, with its
        `data` in the latest version of its type (`schema_version`: the version it was sent in)."""

        event_id: str
        occurred_at: datetime
        source: str | None
        schema_version: int
        customer: dict[str, Any]
        data: dict[str, Any]
        extra: dict[str, Any]

        @property
        def customer_key(self) -> str:
            """The customer key this event was recorded under (contract §1: id, else email, else phone)."""
            key = customer_key(self.customer)
            assert key is not None
            return key

        def apply(self, aggregate: Customer) -> None:  # type: ignore[override]
            aggregate.note_identifiers(self.customer, self.occurred_at, self.event_id)
            aggregate.interactions += 1

    class CallLogged(Interaction):
        # 2: `data` is call data version 2 (duration_ms). Calls stored before it hold version 1's
        # (duration_seconds) and are upcast when read, by the conversion ingest applies to them.
        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["data"] = call_data_v1_to_v2(state["data"])

    class EmailLogged(Interaction):
        pass

    class PurchaseRecorded(Interaction):
        pass

    class SurveyAnswered(Interaction):
        pass

    class IdentityChange(Aggregate.Event):
        """Base of what identity resolution records on a customer's stream (`domain.identity`):
        the interaction whose link caused it (`cause_event_id`, `cause_occurred_at`; None for an
        operator's decision) and why (`reason`: `link` by an event, `unmerge` or `allow` by an
        operator). Identifiers are written `kind:value`, in their normal form. `customer_id`: the
        customer whose stream this is."""

        customer_id: str
        cause_event_id: str | None
        cause_occurred_at: datetime | None
        reason: str

    class IdentifiersJoined(IdentityChange):
        """These identifiers, and the events stored under them, are now this customer's; they were
        `source`'s (a merge when `source` is left with nothing)."""

        identifiers: list[str]
        source: str

    class IdentifiersLeft(IdentityChange):
        """These identifiers went to `target`; `merged`: none is left, this id now redirects there."""

        identifiers: list[str]
        target: str
        merged: bool

    class LinkRefused(IdentityChange):
        """An event of this customer linked it to `identifier`, which stays `owner`'s: two customer
        ids are never merged (`two ids`), or an operator separated them (`separated`)."""

        identifier: str
        owner: str
        why: str

    class Forgotten(Aggregate.Event):
        """Customer `customer_id` asked to be forgotten (GDPR art. 17): the keys this stream's personal
        fields were sealed with (`key_ids`, `domain.personal`) were destroyed with this event, and its
        events read without them from now on. `reason`: why, as the operator gave it (a ticket, say)."""

        customer_id: str
        key_ids: list[str]
        reason: str

    def record(self, envelope: Envelope) -> None:
        """Record one validated interaction as a new fact of this customer."""
        self.trigger_event(EVENT_CLASS_BY_TYPE[envelope.type], **interaction_fields(envelope))

    def note_identifiers(self, customer: dict[str, Any], occurred_at: datetime, event_id: str) -> None:
        email, phone, name = customer.get("email"), customer.get("phone"), customer.get("name")
        if email and email not in self.emails:
            self.emails.append(email)
        if phone and phone not in self.phones:
            self.phones.append(phone)
        # The name of the latest event, by (occurred_at, event_id) as in every read model, wins
        # whatever order events arrive in.
        if name and (self.name_key is None or (occurred_at, event_id) > self.name_key):
            self.name, self.name_key = name, (occurred_at, event_id)


EVENT_CLASS_BY_TYPE: dict[str, type[Customer.Interaction]] = {
    "call": Customer.CallLogged,
    "email": Customer.EmailLogged,
    "purchase": Customer.PurchaseRecorded,
    "survey_response": Customer.SurveyAnswered,
}
TYPE_BY_EVENT_CLASS: dict[type[Customer.Interaction], str] = {
    cls: name for name, cls in EVENT_CLASS_BY_TYPE.items()
}


_ENVELOPE_FIELDS = frozenset({"event_id", "type", "occurred_at", "customer", "source", "version", "data"})


def interaction_fields(envelope: Envelope) -> dict[str, Any]:
    """The fields of the fact recording one validated envelope (the same for every event type).
    Its data is stored in the latest version of the type; the fingerprint, for duplicates, stays
    that of the envelope as sent."""
    content = envelope.canonical()
    return {
        "event_id": envelope.event_id,
        "occurred_at": envelope.occurred_at,
        "source": envelope.source,
        "schema_version": envelope.version,
        "customer": content["customer"],
        "data": data_in_latest_version(envelope.type, envelope.version, content["data"]),
        "extra": {k: v for k, v in content.items() if k not in _ENVELOPE_FIELDS},
    }


def interaction_after(envelope: Envelope, customer_id: UUID, version: int) -> Customer.Interaction:
    """The fact `Customer.record` adds to the customer whose stream is at `version`, made without
    loading the customer: recording needs only the stream's version, which the event store's
    unique (stream, version) key checks."""
    event_class = EVENT_CLASS_BY_TYPE[envelope.type]
    return event_class(  # type: ignore[call-arg]
        originator_id=customer_id, originator_version=version + 1, timestamp=event_class.create_timestamp(),
        **interaction_fields(envelope),
    )


def identity_change(event_class: type[Customer.IdentityChange], stream: UUID, version: int,
                    **fields: Any) -> Customer.IdentityChange:
    """An identity event for the stream at `version` (its previous one), made without loading it."""
    return event_class(originator_id=stream, originator_version=version + 1,  # type: ignore[call-arg]
                       timestamp=event_class.create_timestamp(), **fields)


@lru_cache(maxsize=65536)
def customer_id_for(customer_key: str) -> UUID:
    """The stream id of the customer with this key (contract §1: id, else email, else phone)."""
    return uuid5(CUSTOMER_NAMESPACE, customer_key)
