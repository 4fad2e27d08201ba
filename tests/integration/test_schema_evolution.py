"""Schema evolution against the real PostgreSQL and Kafka: an event store written before call data
version 2 is opened by this code, and every reader sees its calls in version 2's shape.

Each test gets a database of its own holding the tables and rows exactly as the code before
version 2 wrote them (`tests/stored_v1.py`: bytes of that code's own ingest), inserted with plain
SQL. The code under test then opens it as an upgrade would: the aggregate and repository, the
projector (every read model, and rebuilds), and ingest going on with the same customer. Expected
values are worked out here from the stored messages: 310 s is 310,000 ms.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from domain.customer import Customer
from eventstore import tables
from eventstore.store import InteractionLog
from projections.catalog import READ_MODELS
from projections.pages import LogPages
from services.bootstrap import ingest_consumer, interaction_log, projector
from services.http.app import create_app
from services.settings import Settings
from tests import stored_v1
from tests.support import api_key, auth, drain, encode, envelope, new_customer_id, own_database, publish, read_topic

pytestmark = pytest.mark.integration

# The tables as the code before version 2 made them: the library's events table (its DDL of
# eventsourcing 9.5.6) and Rapport's event_id index. What else the code needs it creates on start.
OLD_TABLES = [
    f"CREATE TABLE {tables.EVENTS} (originator_id uuid NOT NULL, originator_version bigint NOT NULL, topic text, "
    "state bytea, notification_id bigserial, PRIMARY KEY (originator_id, originator_version))",
    f"CREATE UNIQUE INDEX {tables.EVENTS}_notification_id_idx ON {tables.EVENTS} (notification_id ASC)",
    f"CREATE TABLE {tables.EVENT_IDS} (event_id text PRIMARY KEY, fingerprint text NOT NULL, originator_id uuid NOT NULL, "
    "source_topic text NOT NULL, source_partition int NOT NULL, source_offset bigint NOT NULL, "
    "recorded_at timestamptz NOT NULL DEFAULT now())",
]

# The calls' data as every reader now sees it: version 2's shape, milliseconds = seconds × 1000.
FIRST_CALL = {"direction": "inbound", "duration_ms": 310_000, "outcome": "resolved", "agent": "kasun", "queue": "billing"}
SECOND_CALL = {"direction": "outbound", "duration_ms": 0, "outcome": "no_answer"}
PURCHASE = stored_v1.MESSAGES[1]["data"]
ANSWER = stored_v1.MESSAGES[2]["data"]


@pytest.fixture
def old_settings(settings: Settings) -> Iterator[Settings]:
    """Settings of this test (topic, group) on a database of its own written by the code before
    version 2; dropped at the end."""
    with own_database(settings, "rapport_test_evolution") as own:
        with psycopg.connect(own.database_url) as conn:
            for statement in OLD_TABLES:
                conn.execute(statement)
            conn.cursor().executemany(
                f"INSERT INTO {tables.EVENTS} (originator_id, originator_version, topic, state) "
                "VALUES (%s, %s, %s, %s)", stored_v1.EVENTS)
            conn.cursor().executemany(
                f"INSERT INTO {tables.EVENT_IDS} (event_id, fingerprint, originator_id, source_topic, "
                "source_partition, source_offset) VALUES (%s, %s, %s, %s, %s, %s)",
                [(e, f, stored_v1.CUSTOMER_ID, "interactions", p, o) for e, f, p, o in stored_v1.EVENT_IDS])
        yield own


@pytest.fixture
def old_store(old_settings: Settings) -> Iterator[InteractionLog]:
    """The event store of that database, opened by this code (as after an upgrade)."""
    store = interaction_log(old_settings)
    yield store
    store.close()


def interactions(store: InteractionLog) -> dict[str, Any]:
    """The customer's interaction events as the repository reads them, by event_id."""
    events = store.repository.event_store.get(stored_v1.CUSTOMER_ID)
    return {e.event_id: e for e in events if isinstance(e, Customer.Interaction)}


def api_answers(client: TestClient) -> dict[str, Any]:
    """Every read model's answer about the customer."""
    key = stored_v1.CUSTOMER_KEY
    paths = [f"/customers/{key}", f"/customers/{key}/timeline?limit=50", f"/customers/{key}/lifecycle",
             "/satisfaction/trend?kind=nps&granularity=month&from=2025-01-01&to=2025-04-01&channel=phone",
             "/satisfaction/revenue-by-category?as_of=2025-03-01T00:00:00Z"]
    answers = {}
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        answers[path] = response.json()
    return answers


def test_the_repository_reads_old_calls_in_version_2s_shape(old_store: InteractionLog) -> None:
    customer = old_store.repository.get(stored_v1.CUSTOMER_ID)
    assert (customer.version, customer.interactions, customer.name) == (5, 4, "Inés Old")
    assert customer.emails == ["ines@example.com"]

    events = interactions(old_store)
    first, second = events["pbx-01:call:1001"], events["pbx-01:call:1002"]
    assert type(first) is type(second) is Customer.CallLogged
    assert first.data == FIRST_CALL and first.schema_version == 1
    assert second.data == SECOND_CALL and second.schema_version == 2  # sent claiming version 2, stored as 1's shape
    assert first.occurred_at == datetime(2025, 1, 10, 4, 45, tzinfo=UTC)
    assert events["shop:order:2001"].data == PURCHASE
    assert events["srv:nps:3001"].data == ANSWER


def test_the_projectors_pages_read_old_calls_in_version_2s_shape_by_the_short_path(old_store: InteractionLog) -> None:
    pages = LogPages(old_store.recorder, old_store.mapper)
    notifications = pages.read(0, 100)
    assert [(n.originator_version, n.state) for n in notifications] == [(r[1], r[3]) for r in stored_v1.EVENTS]
    calls = []
    for notification in notifications:
        fast = pages.decode_short(notification)
        assert fast is not None, "rows stored before version 2 take the short path"
        slow = old_store.mapper.to_domain_event(notification)
        assert type(fast) is type(slow) and repr(vars(fast)) == repr(vars(slow))
        if isinstance(fast, Customer.CallLogged):
            calls.append(fast.data)
    assert calls == [FIRST_CALL, SECOND_CALL]


def test_every_read_model_built_from_old_events_and_rebuilt_answers_with_version_2_calls(
        old_settings: Settings, old_store: InteractionLog) -> None:
    from services.projections_cli import rebuild

    projector(old_settings, old_store).catch_up()
    with TestClient(create_app(old_settings), headers=auth(api_key(old_settings, 'admin'))) as client:
        built = api_answers(client)
        for name in READ_MODELS:
            report = rebuild(old_settings, old_store, name)
            assert report.swapped and report.same, name
        rebuilt = api_answers(client)
    assert rebuilt == built

    key = stored_v1.CUSTOMER_KEY
    view = built[f"/customers/{key}"]
    assert view["interaction_counts"] == {"call": 2, "email": 0, "purchase": 1, "survey_response": 1}
    assert view["preferred_channel"] == "phone"  # the one inbound call
    assert view["purchases"]["revenue"] == {"USD": "120.00"}
    assert view["satisfaction"]["last_nps_score"] == 9
    timeline = {item["event_id"]: item for item in built[f"/customers/{key}/timeline?limit=50"]["items"]}
    assert timeline["pbx-01:call:1001"]["data"] == FIRST_CALL
    assert timeline["pbx-01:call:1002"]["data"] == SECOND_CALL
    assert timeline["shop:order:2001"]["data"] == PURCHASE
    assert timeline["srv:nps:3001"]["data"] == ANSWER
    history = built[f"/customers/{key}/lifecycle"]["items"]
    assert [(i["stage"], i["since"], i["event_id"]) for i in history[:2]] == [
        ("reached", "2025-01-10T04:45:00Z", "pbx-01:call:1001"), ("acquired", "2025-02-01T12:00:00Z", "shop:order:2001")]
    # The NPS answer is about the old call: its channel is the phone.
    [point] = built["/satisfaction/trend?kind=nps&granularity=month&from=2025-01-01&to=2025-04-01&channel=phone"]["points"]
    assert (point["period_start"], point["responses"], point["promoters"], point["nps"]) == ("2025-02-01", 1, 1, 100.0)


def test_ingest_goes_on_with_an_old_stream_and_recognises_its_old_events(
        old_settings: Settings, old_store: InteractionLog) -> None:
    key = stored_v1.CUSTOMER_KEY
    resent_call, resent_purchase, _, resent_claiming_v2 = stored_v1.MESSAGES
    new_v2 = {**envelope(key, "call", "2026-01-05T09:00:00Z", {"direction": "inbound", "duration_ms": 61_500},
                         event_id="pbx-02:call:5001"), "version": 2}
    new_v1 = envelope(key, "call", "2026-01-06T09:00:00Z", {"direction": "outbound", "duration_seconds": 42},
                      event_id="pbx-01:call:5002")
    sent = [resent_call, resent_purchase, new_v2, new_v1, resent_claiming_v2]
    publish(old_settings, sent, key=key.encode())  # one partition: they are read in this order
    consumer = ingest_consumer(old_settings, old_store)
    drain(consumer, old_settings)

    stats = consumer.stats
    assert (stats.stored, stats.duplicates, stats.dead_lettered) == (2, 2, 1)
    customer = old_store.repository.get(stored_v1.CUSTOMER_ID)
    assert (customer.version, customer.interactions) == (7, 6)
    events = old_store.repository.event_store.get(stored_v1.CUSTOMER_ID, gt=5)
    assert [(e.originator_version, e.event_id, e.schema_version, e.data) for e in events] == [
        (6, "pbx-02:call:5001", 2, {"direction": "inbound", "duration_ms": 61_500}),
        (7, "pbx-01:call:5002", 1, {"direction": "outbound", "duration_ms": 42_000}),
    ]
    # Before version 2 any version was taken; now this one's data does not match its version 2.
    [letter] = read_topic(old_settings, old_settings.dead_letter_topic, expected=1)
    assert letter.value == encode(resent_claiming_v2)
    assert letter.headers["rapport-error"] == (
        "data.duration_ms: is required; data.duration_seconds: is a field of version 1 of call; version 2 has "
        'duration_ms instead: send duration_ms, or send "version": 1')

    projector(old_settings, old_store).catch_up()
    with TestClient(create_app(old_settings), headers=auth(api_key(old_settings, 'admin'))) as client:
        items = client.get(f"/customers/{key}/timeline?limit=50").json()["items"]
    calls = {i["event_id"]: i["data"] for i in items if i["type"] == "call"}
    assert calls == {"pbx-01:call:1001": FIRST_CALL, "pbx-01:call:1002": SECOND_CALL,
                     "pbx-02:call:5001": {"direction": "inbound", "duration_ms": 61_500},
                     "pbx-01:call:5002": {"direction": "outbound", "duration_ms": 42_000}}


def test_a_version_2_call_goes_through_http_and_kafka_to_every_read_model(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    customer = new_customer_id()
    over_http = {**envelope(customer, "call", "2026-02-01T10:00:00Z",
                            {"direction": "inbound", "duration_ms": 90_123, "outcome": "resolved"}), "version": 2}
    over_kafka = {**envelope(customer, "call", "2026-02-02T10:00:00Z", {"direction": "outbound", "duration_ms": 0}),
                  "version": 2}
    unknown_call = {**envelope(customer, "call", "2026-02-03T10:00:00Z", {"direction": "inbound", "duration_ms": 5}),
                    "version": 3}
    email_v2 = {**envelope(customer, "email", "2026-02-04T10:00:00Z", {"direction": "inbound"}), "version": 2}

    accepted = client.post("/events", json=over_http)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"accepted": [over_http["event_id"]]}
    refused = client.post("/events", json=[over_kafka, unknown_call])
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{
        "index": 1, "event_id": unknown_call["event_id"],
        "reason": "version: 3 is not a version of call: call has versions 1 and 2; send one of them (2 is the latest)"}]

    publish(settings, [over_kafka, unknown_call, email_v2])
    consumer = ingest_consumer(settings, store)
    drain(consumer, settings)
    assert (consumer.stats.stored, consumer.stats.dead_lettered) == (2, 2)
    letters = {letter.value: letter.headers["rapport-error"]
               for letter in read_topic(settings, settings.dead_letter_topic, expected=2)}
    assert letters == {
        encode(unknown_call): "version: 3 is not a version of call: call has versions 1 and 2; send one of them "
                              "(2 is the latest)",
        encode(email_v2): "version: 2 is not a version of email: email has version 1 only; send 1, or leave version out",
    }

    projector(settings, store).catch_up()
    items = client.get(f"/customers/{customer}/timeline").json()["items"]
    assert [(i["event_id"], i["data"]) for i in items] == [
        (over_kafka["event_id"], {"direction": "outbound", "duration_ms": 0}),
        (over_http["event_id"], {"direction": "inbound", "duration_ms": 90_123, "outcome": "resolved"}),
    ]
    view = client.get(f"/customers/{customer}").json()
    assert view["interaction_counts"]["call"] == 2
    assert view["preferred_channel"] == "phone"
