"""Identity resolution in ingest, against the real broker and database (issue 14): the same person
reached by phone, email and account is one customer whatever the arrival order; two account ids
are never merged; unreadable identifiers are dead-lettered; merges are recorded on both streams."""

from __future__ import annotations

import itertools
import random
import uuid
from typing import Any

import pytest

from domain.customer import Customer, customer_id_for
from domain.identity import Identifier, for_matching, generated_id
from eventstore.store import InteractionLog
from services.bootstrap import ingest_consumer
from services.settings import Settings
from tests.support import drain, publish, read_topic

pytestmark = pytest.mark.integration


def person() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"id": f"crm-{tag}", "email": f"Ana.{tag}@Example.com",
            "phone": f"+94 77 {random.randrange(10**6, 10**7 - 1)}"}


def message(kind: str, minute: int, **customer: str) -> dict[str, Any]:
    data = {"call": {"direction": "inbound", "duration_seconds": 30},
            "email": {"direction": "inbound", "subject": "hello"},
            "purchase": {"order_id": uuid.uuid4().hex[:8], "amount": "10.00", "currency": "USD"}}[kind]
    return {"event_id": f"test:{kind}:{uuid.uuid4().hex}", "type": kind, "occurred_at": f"2026-03-01T10:{minute:02d}:00Z",
            "customer": customer, "source": "tests", "data": data}


def ingest(settings: Settings, store: InteractionLog, messages: list[dict[str, Any]]) -> Any:
    for m in messages:
        c = m["customer"]
        publish(settings, [m], key=(c.get("id") or c.get("email") or c.get("phone")).encode())
    consumer = ingest_consumer(settings, store)
    drain(consumer, settings)
    return consumer


def owners(store: InteractionLog, identifiers: list[Identifier]) -> dict[Identifier, str]:
    with store.interactions.datastore.get_connection() as conn:
        return store.interactions.identity.customer_of(conn, identifiers)


def stream_events(store: InteractionLog, customer: str) -> list[Any]:
    return list(store.events.get(customer_id_for(customer)))


def test_phone_then_email_then_account_is_one_customer_in_every_arrival_order(settings: Settings,
                                                                            store: InteractionLog) -> None:
    for order in itertools.permutations(range(3)):
        p = person()
        key = settings.matching_key()  # emails and phones are matched as keyed hashes (issue 15)
        email = for_matching(Identifier("email", p["email"].lower()), key)
        phone = for_matching(Identifier("phone", p["phone"].replace(" ", "")), key)
        account = Identifier("id", p["id"])
        events = [message("call", 0, phone=p["phone"]),                         # a call from a phone
                  message("email", 10, email=p["email"], phone=p["phone"]),     # an email signed with it
                  message("purchase", 20, id=p["id"], email=p["email"])]        # a purchase by account
        for i in order:  # one batch each: every step is decided on what the one before stored
            ingest(settings, store, [events[i]])

        assert owners(store, [account, email, phone]) == {account: p["id"], email: p["id"], phone: p["id"]}
        # Every event stays in the stream of its own anchor, now the account's customer.
        assert [e.event_id for e in stream_events(store, email.value) if isinstance(e, Customer.Interaction)] == [
            events[1]["event_id"]]
        # Each customer made before the account was known was merged into it, on both streams.
        generated = [c for c in (generated_id(phone), generated_id(email)) if stream_events(store, c)]
        with store.interactions.datastore.get_connection() as conn:
            assert {c: store.interactions.identity.redirect(conn, c) for c in generated} == {c: p["id"] for c in generated}
        # A late call, earlier in event time, renames a generated customer after its phone first.
        joined = [e for e in stream_events(store, p["id"]) if isinstance(e, Customer.IdentifiersJoined)]
        assert {e.source for e in joined} <= set(generated) and (joined or not generated), order
        for c in generated:
            last = list(stream_events(store, c))[-1]
            assert isinstance(last, Customer.IdentifiersLeft) and last.merged, (order, c)
            assert last.cause_event_id in {m["event_id"] for m in events}


def test_two_account_ids_are_never_merged_and_the_refusal_is_recorded(settings: Settings, store: InteractionLog) -> None:
    first, second = person(), person()
    shared = first["email"]
    early = message("purchase", 0, id=first["id"], email=shared)
    late = message("purchase", 30, id=second["id"], email=shared)
    email = for_matching(Identifier("email", shared.lower()), settings.matching_key())  # as identity keeps it
    ingest(settings, store, [late])  # arrives first, but is later in event time
    assert owners(store, [email]) == {email: second["id"]}
    ingest(settings, store, [early])

    assert owners(store, [email, Identifier("id", first["id"]), Identifier("id", second["id"])]) == {
        email: first["id"], Identifier("id", first["id"]): first["id"], Identifier("id", second["id"]): second["id"]}
    refused = [e for e in stream_events(store, second["id"]) if isinstance(e, Customer.LinkRefused)]
    assert [(e.identifier, e.owner, e.why, e.cause_event_id) for e in refused] == [
        (str(email), first["id"], "two ids", late["event_id"])]
    left = [e for e in stream_events(store, second["id"]) if isinstance(e, Customer.IdentifiersLeft)]
    assert [(e.identifiers, e.target, e.merged) for e in left] == [([str(email)], first["id"], False)]


def test_an_unreadable_phone_or_email_is_dead_lettered_with_the_reason(settings: Settings, store: InteractionLog) -> None:
    bad_phone = message("call", 0, id=f"crm-{uuid.uuid4().hex[:8]}", phone="call me maybe")
    bad_email = message("email", 1, email="not-an-address")
    consumer = ingest(settings, store, [bad_phone, bad_email])
    assert consumer.stats.dead_lettered == 2 and consumer.stats.stored == 0
    reasons = sorted(r.headers["rapport-error"] for r in read_topic(settings, settings.dead_letter_topic, expected=2))
    assert "customer.email 'not-an-address' cannot be read" in reasons[0]
    assert "customer.phone 'call me maybe' cannot be read" in reasons[1]
