"""Alerts (issue 16, contract §6) through the real Kafka and PostgreSQL: raised once per alarm answer
or entry into at_risk or churned (by an event or by the passing of time), published once to
`<topic>.alerts`, served by `GET /alerts`, and never for what a rebuild or a replay of the past finds.

Each test has a database and topics of its own (`world`): the alerts table and the relay's lock
are per database, and every message on the alerts topic is then this test's to count.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from domain.alerts import event_alert_id
from eventstore.store import InteractionLog
from projections.alerts import ALERTS
from projections.rebuild import REBUILD_SCHEMA, build_copy, compare_and_swap
from services.alerts import ALERT_ID_HEADER, ALERT_SEQ_HEADER, AlertRelay, raise_due
from services.bootstrap import conninfo, ingest_consumer, interaction_log, projector
from services.http.app import create_app
from services.settings import Settings
from services.topics import delete_topics, ensure_alert_topic, ensure_topics
from tests.conftest import ROOT, settings_env
from tests.integration.pg_faults import database_away, log_tail, start_rapport
from tests.support import (
    api_key,
    auth,
    deliver,
    drain,
    envelope,
    iso,
    new_customer_id,
    own_database,
    parse,
    publish,
    wait_for,
)

pytestmark = pytest.mark.integration

CALL = {"direction": "inbound", "duration_seconds": 60}


@contextmanager
def world(settings: Settings, name: str, **overrides: Any) -> Iterator[Settings]:
    """A database, an interactions topic and an alerts topic of their own."""
    with own_database(settings, f"rapport_test_{name}") as own:
        topic = f"{settings.topic}-{name}-{uuid.uuid4().hex[:6]}"[:200]
        own = own.model_copy(update={"topic": topic, "consumer_group": f"group-{topic}", **overrides})
        ensure_topics(own.kafka_servers, own.topic, own.dead_letter_topic)
        ensure_alert_topic(own.kafka_servers, own.alert_topic)
        try:
            yield own
        finally:
            delete_topics(own.kafka_servers, [own.topic, own.dead_letter_topic, own.alert_topic])


@contextmanager
def store_of(settings: Settings) -> Iterator[InteractionLog]:
    store = interaction_log(settings)
    try:
        yield store
    finally:
        store.close()


def ago(**delta: float) -> str:
    return iso(datetime.now(UTC) - timedelta(**delta))


def alarm(customer: str, at: str, kind: str = "nps", score: int = 3, **extra: str) -> dict[str, Any]:
    return envelope(customer, "survey_response", at, {"kind": kind, "score": score}, **extra)


def purchase(customer: str, at: str, amount: str = "10.00", currency: str = "USD") -> dict[str, Any]:
    return envelope(customer, "purchase", at, {"order_id": f"o-{uuid.uuid4().hex[:8]}", "amount": amount,
                                               "currency": currency})


def alert_rows(settings: Settings, customers: list[str] | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo(settings), row_factory=dict_row) as conn:
        where, values = ("WHERE customer_id = ANY(%s)", (customers,)) if customers is not None else ("", ())
        return conn.execute(f"SELECT * FROM {ALERTS.name} {where} ORDER BY seq", values).fetchall()  # type: ignore[arg-type]


def on_kafka(settings: Settings, at_least: int = 0, timeout: float = 30) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """Every message on the alerts topic (key, JSON, headers), once at least `at_least` are there."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_servers, enable_auto_commit=False, consumer_timeout_ms=500)
    try:
        partitions = [TopicPartition(settings.alert_topic, p) for p in consumer.partitions_for_topic(settings.alert_topic)]
        received: list[tuple[str, dict[str, Any], dict[str, str]]] = []

        def enough() -> bool:
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            received[:] = [(r.key.decode(), json.loads(r.value), {k: v.decode() for k, v in r.headers}) for r in consumer]
            return len(received) >= at_least

        wait_for(enough, timeout=timeout, interval=0.2, what=f"{at_least} alerts on {settings.alert_topic}")
        return received
    finally:
        consumer.close()


def relay_all(settings: Settings, relay: AlertRelay | None = None) -> AlertRelay:
    """Run a relay in this process until the outbox is empty."""
    relay = relay or AlertRelay(settings)
    wait_for(lambda: relay.run_once() == 0 and not [r for r in alert_rows(settings) if r["published_at"] is None],
             timeout=60, interval=0, what="the relay to publish every alert")
    relay.close()
    return relay


def start(command: str, settings: Settings, **env: str) -> subprocess.Popen[bytes]:
    extra = {"RAPPORT_ALERT_MAX_AGE_DAYS": str(settings.alert_max_age_days), **env}
    return subprocess.Popen([sys.executable, "-m", "services.cli", command], cwd=ROOT,
                            env=settings_env(settings, **extra))


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=60) == 0, f"exited with {process.returncode}"
    finally:
        process.kill()


# --------------------------------------------------------------------------------------------


def test_an_alarm_answer_is_one_alert_on_kafka_and_in_get_alerts(settings: Settings) -> None:
    with world(settings, "alarm") as own, store_of(own) as store:
        customer = new_customer_id()
        events = [purchase(customer, ago(days=3), "120.50"), purchase(customer, ago(days=3, hours=1), "7", "EUR"),
                  alarm(customer, ago(days=2)), alarm(customer, ago(days=1), score=8),
                  envelope(customer, "call", ago(hours=5), CALL), alarm(customer, ago(hours=4), "csat", 1),
                  alarm(customer, ago(hours=3), "csat", 3)]
        deliver(own, store, events)
        relay = start("alerts", own)
        try:
            messages = on_kafka(own, at_least=2)
            deliver(own, store, events)  # the same events again: duplicates, no new alert
            projector(own, store).catch_up()
        finally:
            stop(relay)

        expected = {(event_alert_id(events[2]["event_id"]), "NPS 3", parse(events[2]["occurred_at"])),
                    (event_alert_id(events[5]["event_id"]), "CSAT 1", parse(events[5]["occurred_at"]))}
        assert {(m["alert_id"], m["reason"], parse(m["occurred_at"])) for _, m, _ in messages} == expected
        assert len(on_kafka(own)) == 2 and len(alert_rows(own)) == 2
        for key, message, headers in messages:
            assert key == customer == message["customer_id"] and message["kind"] == "alarm_answer"
            assert message["revenue"] == {"EUR": "7", "USD": "120.50"}
            assert parse(message["last_contact_at"]) == parse(events[6]["occurred_at"]), "the latest interaction"
            assert headers[ALERT_ID_HEADER] == message["alert_id"] and int(headers[ALERT_SEQ_HEADER]) > 0
            assert parse(message["raised_at"]) >= parse(message["occurred_at"])

        with TestClient(create_app(own), headers=auth(api_key(own, "analyst"))) as client:
            answer = client.get("/alerts", params={"kind": "alarm_answer"})
            assert answer.status_code == 200, answer.text
            newest_first = sorted((m for _, m, _ in messages), key=lambda m: (parse(m["raised_at"]), m["alert_id"]),
                                  reverse=True)
            assert answer.json() == {"items": newest_first, "next_cursor": None}, "the JSON of the messages"
            assert client.get("/alerts", params={"kind": "churned"}).json() == {"items": [], "next_cursor": None}


def test_get_alerts_pages_newest_first_and_names_bad_parameters(settings: Settings) -> None:
    with world(settings, "paging") as own, store_of(own) as store:
        customers = [new_customer_id() for _ in range(5)]
        deliver(own, store, [alarm(c, ago(hours=i + 1)) for i, c in enumerate(customers)])
        with TestClient(create_app(own), headers=auth(api_key(own, "analyst"))) as client:
            items, cursor = [], None
            while True:
                page = client.get("/alerts", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
                items += page["items"]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert sorted(i["customer_id"] for i in items) == sorted(customers)
            assert [(parse(i["raised_at"]), i["alert_id"]) for i in items] == sorted(
                ((parse(i["raised_at"]), i["alert_id"]) for i in items), reverse=True)
            latest = max(i["raised_at"] for i in items)
            assert client.get("/alerts", params={"since": latest}).json()["items"] == [i for i in items
                                                                                     if i["raised_at"] == latest]
            assert client.get("/alerts", params={"since": ago(days=-1)}).json()["items"] == []
            for params, named in [({"kind": "vip"}, "kind"), ({"since": "yesterday"}, "since"),
                                  ({"cursor": "nonsense"}, "cursor"), ({"limit": 0}, "limit"), ({"limit": 501}, "limit")]:
                answer = client.get("/alerts", params=params)
                assert answer.status_code == 422 and named in answer.text, (params, answer.text)


def test_each_alarm_is_one_alert_and_one_message_after_the_projector_is_killed_mid_stream(settings: Settings) -> None:
    with world(settings, "kill") as own, store_of(own) as store:
        customers = [new_customer_id() for _ in range(100)]
        events = []
        for i in range(6000):
            customer, at = customers[i % 100], ago(days=20, minutes=-3 * i)
            events.append(alarm(customer, at, score=i % 11) if i % 3 == 0 else envelope(customer, "call", at, CALL))
        publish(own, events)
        drain(ingest_consumer(own, store), own, timeout=180)
        runner = projector(own, store)
        head = store.recorder.max_notification_id()

        def progress() -> int:
            return min(runner.positions().values())

        batches = {"RAPPORT_PROJECTION_PAGE_SIZE": "100", "RAPPORT_PROJECTION_CATCH_UP_EVENTS": "1000"}
        first = start("projector", own, **batches)
        try:
            wait_for(lambda: progress() >= head // 10, timeout=120, interval=0.01, what="some progress")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            first.kill()
        assert 0 < progress() < head, "the kill was not mid-stream"
        alarms = [e["event_id"] for e in events if e["type"] == "survey_response" and e["data"]["score"] < 6]
        assert 0 < len(alert_rows(own)) < len(alarms), "some alerts were raised before the kill, not all"
        second = start("projector", own, **batches)
        try:
            wait_for(lambda: progress() >= head, timeout=180, interval=0.1, what="the projector to reach the head")
        finally:
            stop(second)

        rows = alert_rows(own)
        assert Counter(r["event_id"] for r in rows) == Counter(alarms)
        assert {r["kind"] for r in rows} == {"alarm_answer"}
        relay_all(own)
        messages = on_kafka(own, at_least=len(alarms))
        assert Counter(m["event_id"] for _, m, _ in messages) == Counter(alarms)


class KilledBetweenPublishingAndMarking(AlertRelay):
    def _mark(self, published: Any, ends: dict[int, int]) -> None:
        if published and not ends:  # a batch just published, not a read-back
            raise KeyboardInterrupt("killed after publishing, before marking")
        super()._mark(published, ends)


def test_a_relay_stopped_between_publishing_and_marking_publishes_nothing_twice(settings: Settings) -> None:
    with world(settings, "relay") as own, store_of(own) as store:
        customers = [new_customer_id() for _ in range(30)]
        deliver(own, store, [alarm(c, ago(hours=h + 1)) for c in customers for h in range(4)])
        assert len(alert_rows(own)) == 120

        crashed = KilledBetweenPublishingAndMarking(own, batch=50)
        with pytest.raises(KeyboardInterrupt):
            crashed.run_once()
        crashed.close()  # its connections end with it (the lock too)
        assert len(on_kafka(own, at_least=50)) == 50, "the first batch reached Kafka"
        assert all(r["published_at"] is None for r in alert_rows(own)), "and none was marked"

        again = relay_all(own, AlertRelay(own, batch=50))
        assert again.recovered == 50 and again.published == 70
        messages = on_kafka(own, at_least=120)
        assert len(messages) == 120 and len({m["alert_id"] for _, m, _ in messages}) == 120
        rows = {r["alert_id"]: r for r in alert_rows(own)}
        assert {m["alert_id"] for _, m, _ in messages} == set(rows)
        assert all(r["kafka_offset"] is not None for r in rows.values())


def test_a_relay_killed_anywhere_and_restarted_publishes_each_alert_once(settings: Settings) -> None:
    with world(settings, "sigkill") as own, store_of(own) as store:
        customers = [new_customer_id() for _ in range(1000)]
        deliver(own, store, [alarm(c, ago(minutes=m + 1)) for c in customers for m in range(6)])
        total = len(alert_rows(own))
        assert total == 6000

        def published() -> int:
            with psycopg.connect(conninfo(own)) as conn:
                return int(conn.execute(f"SELECT count(published_at) FROM {ALERTS.name}").fetchone()[0])  # type: ignore[index]

        first = start("alerts", own)
        try:
            wait_for(lambda: published() > 0, timeout=60, interval=0.005, what="some alerts published")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            first.kill()
        assert published() < total, "the kill was not mid-stream"
        second = start("alerts", own)
        try:
            wait_for(lambda: published() == total, timeout=120, interval=0.2, what="every alert published")
        finally:
            stop(second)
        messages = on_kafka(own, at_least=total)
        assert len(messages) == total and len({m["alert_id"] for _, m, _ in messages}) == total


def test_a_change_by_the_passing_of_time_raises_an_alert_with_no_new_event(settings: Settings) -> None:
    with world(settings, "time") as own, store_of(own) as store:
        customer = new_customer_id()
        bought = datetime.now(UTC) - timedelta(days=180) + timedelta(seconds=15)  # at risk 15 s from the start of the test
        deliver(own, store, [envelope(customer, "call", iso(bought - timedelta(days=1)), CALL),
                             purchase(customer, iso(bought), "99.99")])
        assert datetime.now(UTC) < bought + timedelta(days=180), "projected before the threshold passed"
        assert alert_rows(own) == [], "not raised ahead of time"

        relay = start("alerts", own, RAPPORT_ALERT_RAISE_INTERVAL_SECONDS="0.5")
        try:
            [(key, message, _)] = on_kafka(own, at_least=1, timeout=60)
        finally:
            stop(relay)
        passed = bought + timedelta(days=180)
        assert (key, message["kind"], message["reason"], message["event_id"]) == (
            customer, "at_risk", "no purchase for 180 days", None)
        assert parse(message["occurred_at"]) == passed
        assert parse(message["raised_at"]) > passed
        assert message["revenue"] == {"USD": "99.99"} and parse(message["last_contact_at"]) == bought
        with TestClient(create_app(own), headers=auth(api_key(own, "analyst"))) as client:
            assert client.get("/alerts", params={"kind": "at_risk"}).json()["items"] == [message]


def test_changes_older_than_the_max_age_when_learnt_of_raise_no_alert(settings: Settings) -> None:
    with world(settings, "backfill") as own, store_of(own) as store:
        old, recent = new_customer_id(), new_customer_id()
        deliver(own, store, [
            alarm(old, ago(days=40)), purchase(old, ago(days=250)),  # an alarm, at risk 70 days ago: the past
            alarm(recent, ago(days=5)), purchase(recent, ago(days=190)),  # an alarm, at risk 10 days ago: news
        ])
        rows = alert_rows(own)
        assert {(r["customer_id"], r["kind"]) for r in rows} == {(recent, "alarm_answer"), (recent, "at_risk")}
        with psycopg.connect(conninfo(own), row_factory=dict_row) as conn:
            assert raise_due(conn, AlertRelay(own).outbox) == 0, "the raiser finds nothing older either"

    with world(settings, "backfill_longer", alert_max_age_days=60) as own, store_of(own) as store:
        customer = new_customer_id()
        deliver(own, store, [alarm(customer, ago(days=40))])
        assert [r["kind"] for r in alert_rows(own)] == ["alarm_answer"], "RAPPORT_ALERT_MAX_AGE_DAYS is the cut-off"


def test_a_rebuild_of_the_lifecycle_read_model_raises_no_alert_and_neither_does_its_swap(settings: Settings) -> None:
    with world(settings, "rebuild") as own, store_of(own) as store:
        customer = new_customer_id()
        deliver(own, store, [alarm(customer, ago(days=2)), purchase(customer, ago(days=185))])
        assert {r["kind"] for r in alert_rows(own)} == {"alarm_answer", "at_risk"}
        with psycopg.connect(conninfo(own), row_factory=dict_row) as conn:
            raise_due(conn, AlertRelay(own).outbox)
            conn.execute(f"DELETE FROM {ALERTS.name}")  # so that raising any of them again would show
            conn.commit()

        copy = projector(own, store, only=["lifecycle"], schema=REBUILD_SCHEMA)
        build_copy(copy)
        report = compare_and_swap(projector(own, store, only=["lifecycle"]), copy)
        assert report.swapped and report.same, report
        with psycopg.connect(conninfo(own), row_factory=dict_row) as conn:
            raise_due(conn, AlertRelay(own).outbox)
        projector(own, store).catch_up()
        assert alert_rows(own) == []

        another = new_customer_id()
        deliver(own, store, [alarm(another, ago(hours=1), "csat", 2)])
        assert [(r["customer_id"], r["reason"]) for r in alert_rows(own)] == [(another, "CSAT 2")], \
            "the swapped-in copy raises what is new"


def test_a_merge_refolds_a_customer_without_raising_its_alerts_again(settings: Settings) -> None:
    with world(settings, "merge") as own, store_of(own) as store:
        account, phone = new_customer_id(), f"+9477{uuid.uuid4().int % 10**7:07d}"
        by_phone = {"event_id": f"survey:{uuid.uuid4().hex}", "type": "survey_response", "occurred_at": ago(days=3),
                    "customer": {"phone": phone}, "source": "tests", "data": {"kind": "nps", "score": 2}}
        deliver(own, store, [by_phone])
        [before] = alert_rows(own)
        deliver(own, store, [envelope(account, "purchase", ago(days=1), {"order_id": "o-1", "amount": "5",
                                                                         "currency": "USD"}, phone=phone)])
        with psycopg.connect(conninfo(own)) as conn:
            owner = conn.execute("SELECT DISTINCT customer_id FROM lifecycle_facts WHERE event_id = %s",
                                 (by_phone["event_id"],)).fetchall()
        assert owner == [(account,)], "the phone's answer is the account's now (refolded)"
        assert alert_rows(own) == [before], "and its alert was not raised again"


def test_alerts_hold_no_personal_data(settings: Settings) -> None:
    with world(settings, "personal") as own, store_of(own) as store:
        customer = new_customer_id()
        personal = {"name": "Ana Perera", "email": f"ana.{uuid.uuid4().hex[:6]}@example.com", "phone": "+94770000001"}
        deliver(own, store, [alarm(customer, ago(days=1), **personal),
                             envelope(customer, "email", ago(hours=2), {"direction": "inbound", "subject": "Ana here"},
                                      **personal),
                             alarm(customer, ago(hours=1), "csat", 1, **personal)])
        rows = alert_rows(own)
        assert len(rows) == 2
        text = json.dumps(rows, default=str)
        assert not [v for v in (*personal.values(), "Ana") if v in text]


def test_the_relay_rides_through_a_database_outage(settings: Settings, tmp_path: Path) -> None:
    with world(settings, "outage") as own:
        before, after = new_customer_id(), new_customer_id()
        with store_of(own) as store:
            deliver(own, store, [alarm(before, ago(hours=2))])
        relay = start_rapport("alerts", own, tmp_path, RAPPORT_ALERT_RAISE_INTERVAL_SECONDS="0.5",
                              RAPPORT_ALERT_MAX_AGE_DAYS=str(own.alert_max_age_days))
        try:
            on_kafka(own, at_least=1)
            with database_away(own):
                wait_for(lambda: "PostgreSQL unavailable" in (tmp_path / "alerts.log").read_text(), timeout=60,
                         what="the relay to notice the outage")
            assert relay.poll() is None, log_tail(tmp_path, "alerts")
            with store_of(own) as store:
                deliver(own, store, [alarm(after, ago(hours=1))])
            messages = on_kafka(own, at_least=2, timeout=90)
        finally:
            stop(relay)
        assert sorted(key for key, _, _ in messages) == sorted([before, after]), log_tail(tmp_path, "alerts")
