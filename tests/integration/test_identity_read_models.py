"""Every read model follows identity resolution (issue 14): a person whose channels are linked late
ends with exactly the rows of a person known by one account id from the first event, in every
read model, whatever the order the events arrive in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from domain.identity import Identifier, Separation, for_matching, generated_id
from eventstore.identity import parse_identifier
from services.bootstrap import READ_MODELS, interaction_log, read_models
from services.settings import Settings
from services.topics import delete_topics, ensure_topics
from tests.support import deliver, own_database


def kept(settings: Settings, text: str) -> str:
    """An identifier as identity resolution keeps it: emails and phones as keyed hashes (issue 15)."""
    return str(for_matching(Identifier.parse(text), settings.matching_key()))


pytestmark = pytest.mark.integration

ACCOUNT = "crm-merge-1"
EMAIL, PHONE = "Ana.Perera@Example.com", "+94 77 123 4567"


def journey(account_everywhere: bool) -> list[dict[str, Any]]:
    """A person reached by phone (a call, an alarm answer about it), then by email (signed with the
    phone), then buying with an account (giving the email), then by phone again. With
    `account_everywhere` every event also carries the account id: the person known from the start."""
    def customer(**identifiers: str) -> dict[str, str]:
        return {"id": ACCOUNT, **identifiers} if account_everywhere else identifiers

    return [
        {"event_id": "pbx:1", "type": "call", "occurred_at": "2026-01-05T10:00:00Z", "customer": customer(phone=PHONE),
         "data": {"direction": "inbound", "duration_seconds": 300}},
        {"event_id": "survey:1", "type": "survey_response", "occurred_at": "2026-01-05T11:00:00Z",
         "customer": customer(phone=PHONE), "data": {"kind": "nps", "score": 3, "about_event_id": "pbx:1"}},
        {"event_id": "mail:1", "type": "email", "occurred_at": "2026-02-01T09:00:00Z",
         "customer": customer(email=EMAIL, phone=PHONE, name="Ana"), "data": {"direction": "inbound", "subject": "refund"}},
        {"event_id": "shop:1", "type": "purchase", "occurred_at": "2026-03-01T12:00:00Z",
         "customer": {"id": ACCOUNT, "email": EMAIL},
         "data": {"order_id": "o-1", "amount": "120.00", "currency": "USD", "items": [{"sku": "sku-9", "quantity": 1,
                                                                                         "unit_price": "120.00"}]}},
        {"event_id": "pbx:2", "type": "call", "occurred_at": "2026-04-01T10:00:00Z", "customer": customer(phone=PHONE),
         "data": {"direction": "outbound", "duration_seconds": 60}},
        {"event_id": "survey:2", "type": "survey_response", "occurred_at": "2026-04-02T10:00:00Z",
         "customer": customer(phone=PHONE), "data": {"kind": "csat", "score": 5, "about_event_id": "shop:1"}},
    ]


@contextmanager
def world(settings: Settings, name: str) -> Iterator[Settings]:
    """A database and a topic of their own."""
    with own_database(settings, f"rapport_test_{name}") as own:
        topic = f"{settings.topic}-{name}-{uuid.uuid4().hex[:6]}"[:200]
        own = own.model_copy(update={"topic": topic, "consumer_group": f"group-{topic}"})
        ensure_topics(own.kafka_servers, own.topic, own.dead_letter_topic)
        try:
            yield own
        finally:
            delete_topics(own.kafka_servers, [own.topic, own.dead_letter_topic])


def read_model_rows(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every row of every read model's tables, in a stable order."""
    rows = {}
    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        for model in read_models(settings):
            for table in model.tables:
                columns = ", ".join(f'"{c}"' for c in table.column_names)
                rows[table.name] = conn.execute(f"SELECT {columns} FROM {model.t(table.name)} ORDER BY {columns}").fetchall()
    return rows


def ingest_in_batches(settings: Settings, messages: list[dict[str, Any]], batches: list[list[int]]) -> None:
    store = interaction_log(settings)
    try:
        for batch in batches:
            deliver(settings, store, [messages[i] for i in batch])
    finally:
        store.close()


@pytest.mark.parametrize("batches", [
    [[0], [1], [2], [3], [4], [5]],           # as it happened, one event at a time
    [[3], [2], [0, 1], [5, 4]],               # the purchase first, the phone's events late
    [[4, 5], [2, 3], [1, 0]],                 # backwards, two at a time
], ids=["in-order", "purchase-first", "backwards"])
def test_a_person_linked_late_has_the_rows_of_one_known_from_the_start(settings: Settings, batches: list[list[int]]) -> None:
    assert sorted(i for batch in batches for i in batch) == list(range(6))
    assert set(READ_MODELS) == {"customer_360", "lifecycle", "satisfaction", "timeline", "value"}, "a new read model: add it here"
    with world(settings, "known") as known:
        ingest_in_batches(known, journey(account_everywhere=True), [list(range(6))])
        expected = read_model_rows(known)
    with world(settings, "linked") as linked:
        ingest_in_batches(linked, journey(account_everywhere=False), batches)
        rows = read_model_rows(linked)
        with psycopg.connect(linked.database_url) as conn:
            owners = dict(conn.execute("SELECT identifier, customer_id FROM rapport_identifiers").fetchall())

    assert owners == {"id:crm-merge-1": ACCOUNT, kept(settings, "email:ana.perera@example.com"): ACCOUNT,
                      kept(settings, "phone:+94771234567"): ACCOUNT}
    assert {r["customer_id"] for r in rows["customer_360"]} == {ACCOUNT}
    assert rows["customer_360"][0]["call_count"] == 2 and rows["customer_360"][0]["purchase_count"] == 1
    for table, table_rows in expected.items():
        assert rows[table] == table_rows, table
    assert generated_id(parse_identifier(kept(settings, "phone:+94771234567"))) not in str(rows)


def test_an_unmerge_gives_every_read_model_the_rows_of_a_separation_made_before_any_event(settings: Settings) -> None:
    from services import identities
    from services.bootstrap import projector

    phone = "phone:+94771234567"
    with world(settings, "apart") as apart:
        interaction_log(apart).close()  # the event store's tables
        separation = Separation.of(parse_identifier(kept(settings, phone)), Identifier("id", ACCOUNT))
        with psycopg.connect(apart.database_url) as conn:
            conn.execute("INSERT INTO rapport_identity_separations (a, b, reason) VALUES (%s, %s, 'from the start')",
                         (str(separation.a), str(separation.b)))
        ingest_in_batches(apart, journey(account_everywhere=False), [list(range(6))])
        expected = read_model_rows(apart)
    anonymous = generated_id(parse_identifier(kept(settings, phone)))
    assert {r["customer_id"] for r in expected["customer_360"]} == {ACCOUNT, anonymous}

    with world(settings, "unmerged") as linked:
        ingest_in_batches(linked, journey(account_everywhere=False), [[i] for i in range(6)])
        before = read_model_rows(linked)
        store = interaction_log(linked)
        try:
            done = identities.unmerge(store, ACCOUNT, phone, "US", reason="ticket 42", key=settings.matching_key())
            assert [(m[1], m[2]) for m in done.moves] == [(ACCOUNT, anonymous)]
            projector(linked, store).catch_up()
            assert read_model_rows(linked) == expected
            # A later event linking them again is refused, and the rows stay apart.
            deliver(linked, store, [{"event_id": "shop:2", "type": "purchase", "occurred_at": "2026-05-01T10:00:00Z",
                                     "customer": {"id": ACCOUNT, "phone": "+94771234567"},
                                     "data": {"order_id": "o-2", "amount": "1.00", "currency": "USD"}}])
            with psycopg.connect(linked.database_url) as conn:
                assert conn.execute("SELECT customer_id FROM rapport_identifiers WHERE identifier = %s",
                                    (kept(settings, phone),)).fetchone()[0] != ACCOUNT
            identities.allow(store, ACCOUNT, phone, "US", key=settings.matching_key())
            projector(linked, store).catch_up()
            after = read_model_rows(linked)
        finally:
            store.close()
    # Allowed again: one customer, as before the unmerge, with the new purchase too.
    assert {r["customer_id"] for r in after["customer_360"]} == {ACCOUNT}
    assert after["customer_360"][0]["purchase_count"] == before["customer_360"][0]["purchase_count"] + 1
