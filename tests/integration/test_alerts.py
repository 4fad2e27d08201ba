"""Alerts (issue 16, contract §6) through the real Kafka and PostgreSQL: raised once per alarm answer
or entry into at_risk or churned (by an event or by the passing of time), published once to
`<topic>.alerts`, served by `GET /alerts`, and never for what a rebuild or a replay of the past finds.

Each test has a database and topics of its own (`world`): the alerts table and the relay's lock
are per database, and every message on the alerts topic is then this test's to count. Messages are
counted as a consumer reading with `isolation_level=read_committed` sees them (`on_kafka`), which is
what the contract promises exactly once; an alert id seen twice there fails the test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
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
from kafka.errors import KafkaError, KafkaTimeoutError
from psycopg.rows import dict_row

from domain.alerts import AlertKind, event_alert_id, time_alert_id
from eventstore.store import InteractionLog
from projections.alerts import ALERTS
from projections.rebuild import REBUILD_SCHEMA, build_copy, compare_and_swap
from services.alerts import ALERT_ID_HEADER, ALERT_SEQ_HEADER, ALERT_SOURCE_HEADER, RaiserAndRelay, raise_due
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


def on_kafka(settings: Settings, at_least: int = 0, timeout: float = 90,
             isolation_level: str = "read_committed") -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """Every message on the alerts topic (key, JSON, headers) as a consumer of `isolation_level` sees
    it: each partition read from its start to its end offset (read_committed: the last stable offset),
    again until at least `at_least` are there. Fails on an alert id seen twice (read_committed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_servers, enable_auto_commit=False,
                             isolation_level=isolation_level)
    try:
        partitions = [TopicPartition(settings.alert_topic, p) for p in consumer.partitions_for_topic(settings.alert_topic)]
        consumer.assign(partitions)
        received: list[tuple[str, dict[str, Any], dict[str, str]]] = []

        def read_to_the_end() -> bool:
            consumer.seek_to_beginning(*partitions)
            ends = consumer.end_offsets(partitions)
            received.clear()
            deadline = time.monotonic() + timeout
            while any(consumer.position(tp) < ends[tp] for tp in partitions):
                assert time.monotonic() < deadline, f"reading {settings.alert_topic} to its end took over {timeout} s"
                received.extend((r.key.decode(), json.loads(r.value), {k: v.decode() for k, v in r.headers})
                                for records in consumer.poll(timeout_ms=200).values() for r in records)
            return len(received) >= at_least

        wait_for(read_to_the_end, timeout=timeout, interval=0.2, what=f"{at_least} alerts on {settings.alert_topic}")
    finally:
        consumer.close()
    if isolation_level == "read_committed":
        seen = Counter(m["alert_id"] for _, m, _ in received)
        assert not [i for i, n in seen.items() if n > 1], f"alerts seen twice: {[i for i, n in seen.items() if n > 1]}"
    return received


def relay_all(settings: Settings, relay: RaiserAndRelay | None = None) -> RaiserAndRelay:
    """Run a relay in this process until the outbox is empty."""
    relay = relay or RaiserAndRelay(settings)
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


class KilledBetweenPublishingAndMarking(RaiserAndRelay):
    def _mark(self, published: Any, positions: dict[int, int], overwrite: bool) -> None:
        if published and not overwrite:  # a batch just committed on Kafka, not a read-back
            raise KeyboardInterrupt("killed after Kafka's commit, before PostgreSQL's")
        super()._mark(published, positions, overwrite)


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

        again = relay_all(own, RaiserAndRelay(own, batch=50))
        assert again.recovered == 50 and again.published == 70
        messages = on_kafka(own, at_least=120)
        assert len(messages) == 120 and len({m["alert_id"] for _, m, _ in messages}) == 120
        rows = {r["alert_id"]: r for r in alert_rows(own)}
        assert {m["alert_id"] for _, m, _ in messages} == set(rows)
        assert all(r["kafka_offset"] is not None for r in rows.values())
        assert {h[ALERT_SOURCE_HEADER] for _, _, h in messages} == {deployment(own)}


def deployment(settings: Settings) -> str:
    with psycopg.connect(conninfo(settings)) as conn:
        return str(conn.execute("SELECT deployment FROM alerts_relay").fetchone()[0])  # type: ignore[index]


def published_count(settings: Settings) -> int:
    with psycopg.connect(conninfo(settings)) as conn:
        return int(conn.execute(f"SELECT count(published_at) FROM {ALERTS.name}").fetchone()[0])  # type: ignore[index]


def test_a_relay_killed_between_kafkas_commit_and_postgresqls_then_anywhere_publishes_each_alert_once(
        settings: Settings, tmp_path: Path) -> None:
    with world(settings, "sigkill") as own, store_of(own) as store:
        customers = [new_customer_id() for _ in range(1000)]
        deliver(own, store, [alarm(c, ago(minutes=m + 1)) for c in customers for m in range(6)])
        total = len(alert_rows(own))
        assert total == 6000
        runs = [tmp_path / name for name in ("first", "second", "last")]
        for run in runs:
            run.mkdir()

        # Killed after Kafka's commit and before PostgreSQL's: the relay's record of its first batch
        # waits on a row lock of ours (the batch's first alert) while the batch is on Kafka, committed.
        with psycopg.connect(conninfo(own)) as blocker:
            blocker.execute(f"SELECT 1 FROM {ALERTS.name} WHERE seq = (SELECT min(seq) FROM {ALERTS.name}) FOR UPDATE")  # noqa: S608
            first = start_rapport("alerts", own, runs[0])
            try:
                wait_for(lambda: len(on_kafka(own)) > 0, timeout=90, interval=0.2, what="a batch committed on Kafka")
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=30)
            finally:
                first.kill()
            blocker.rollback()
        unmarked = len(on_kafka(own))
        assert published_count(own) == 0 and unmarked > 0, "alerts on Kafka, none recorded published"

        second = start_rapport("alerts", own, runs[1])
        try:  # it reads back, then publishes; killed anywhere once it has published more
            wait_for(lambda: published_count(own) > unmarked, timeout=90, interval=0.005, what="more alerts published")
            second.send_signal(signal.SIGKILL)
            second.wait(timeout=30)
        finally:
            second.kill()
        assert f"{unmarked} alerts were on {own.alert_topic} but not marked published" in \
            (runs[1] / "alerts.log").read_text(), log_tail(runs[1], "alerts")
        assert published_count(own) < total, "the kill was not mid-stream"

        last = start_rapport("alerts", own, runs[2])
        try:
            wait_for(lambda: published_count(own) == total, timeout=180, interval=0.2, what="every alert published")
        finally:
            stop(last)
        messages = on_kafka(own, at_least=total)  # fails on an alert seen twice
        assert len(messages) == total
        assert {m["alert_id"] for _, m, _ in messages} == {r["alert_id"] for r in alert_rows(own)}


class FailingMidBatch(RaiserAndRelay):
    """Its producer writes part of a batch, then fails (as a broker that goes away mid-batch)."""

    failures = 1

    def publish_once(self) -> int:
        producer = self._producer
        if producer is not None and self.failures:
            self.failures -= 1
            send, sent = producer.send, []

            def failing_send(*args: Any, **kwargs: Any) -> Any:
                if len(sent) == 30:
                    producer.flush()  # the first 30 are in the log, in the open transaction
                    raise KafkaTimeoutError("the broker went away mid-batch")
                sent.append(send(*args, **kwargs))
                return sent[-1]

            producer.send = failing_send  # type: ignore[method-assign]
        return super().publish_once()


def test_a_producer_failing_mid_batch_leaves_no_duplicate_for_a_read_committed_consumer(settings: Settings) -> None:
    with world(settings, "midbatch") as own, store_of(own) as store:
        customers = [new_customer_id() for _ in range(40)]
        deliver(own, store, [alarm(c, ago(hours=h + 1)) for c in customers for h in range(2)])
        relay = FailingMidBatch(own, batch=50)
        with pytest.raises(KafkaTimeoutError):
            relay.run_once()
        assert published_count(own) == 0
        relay_all(own, relay)
        assert relay.recovered == 0 and relay.published == 80
        assert len(on_kafka(own, at_least=80)) == 80, "each alert once, read_committed"
        assert len(on_kafka(own, isolation_level="read_uncommitted")) == 110, "the aborted 30 are in the log"


def relay_lock_held(settings: Settings) -> bool:
    with psycopg.connect(conninfo(settings)) as conn:
        return bool(conn.execute("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                                 "WHERE l.locktype = 'advisory' AND d.datname = current_database()").fetchone()[0])  # type: ignore[index]


def test_two_relays_at_once_publish_each_alert_once_the_earlier_fenced(settings: Settings) -> None:
    with world(settings, "fenced") as own, store_of(own) as store:
        customers = [new_customer_id() for _ in range(30)]
        deliver(own, store, [alarm(c, ago(hours=h + 1)) for c in customers for h in range(4)])
        first, second = RaiserAndRelay(own, batch=50), RaiserAndRelay(own, batch=500)
        first.run_once()  # connected, read back, a first batch of 50 published
        assert published_count(own) == 50

        def take_over() -> None:
            """`first` lost its lock's connection after sending a batch, before committing it;
            `second` takes the lock (and fences `first`) and publishes everything."""
            assert first._lock_conn is not None
            first._lock_conn.close()
            wait_for(lambda: not relay_lock_held(own), timeout=30, what="the relay's lock to be free")
            relay_all(own, second)

        producer = first._producer
        assert producer is not None
        flush = producer.flush
        producer.flush = lambda timeout=None: (flush(timeout), take_over())[0]  # type: ignore[method-assign]
        with pytest.raises(KafkaError) as refused:
            first.publish_once()  # its batch sent, its commit refused: fenced
        assert not isinstance(refused.value, KafkaTimeoutError), refused.value
        first.close()

        assert second.published == 70 and second.recovered == 0
        messages = on_kafka(own, at_least=120)
        assert len(messages) == 120 and {m["alert_id"] for _, m, _ in messages} == {r["alert_id"] for r in alert_rows(own)}
        assert len(on_kafka(own, isolation_level="read_uncommitted")) == 170, "first's second batch: aborted"


def test_a_transaction_another_producer_leaves_open_on_the_topic_delays_the_read_back(settings: Settings) -> None:
    """What follows an open transaction is hidden from read_committed readers, the read-back too: it
    waits for the transaction to end rather than take the topic's end for what it can see."""
    from consumers.ingest import kafka_producer

    with world(settings, "foreign") as own, store_of(own) as store:
        deliver(own, store, [alarm(new_customer_id(), ago(hours=h + 1)) for h in range(10)])
        foreign = kafka_producer(own.kafka_client_config, transactional_id=f"not-rapport-{uuid.uuid4().hex}")
        try:
            foreign.init_transactions()
            foreign.begin_transaction()
            foreign.send(own.alert_topic, key=b"someone", value=b"{}", partition=0)
            foreign.flush()
            relay = RaiserAndRelay(own)
            with pytest.raises(KafkaError, match="left open"):
                relay.run_once()
            foreign.abort_transaction()
        finally:
            foreign.close()
        relay_all(own, relay)
        assert relay.published == 10 and len(on_kafka(own, at_least=10)) == 10


def test_a_change_by_the_passing_of_time_raises_an_alert_with_no_new_event(settings: Settings) -> None:
    with world(settings, "time") as own, store_of(own) as store:
        customer = new_customer_id()
        # The purchase makes the customer at risk a little after it is projected: four times what one
        # delivery took here (at least 15 s), so a slow machine projects it first without the test
        # waiting a fixed minute and a half on a quick one.
        started = time.monotonic()
        deliver(own, store, [envelope(customer, "call", iso(datetime.now(UTC) - timedelta(days=181)), CALL)])
        room = max(15.0, 4 * (time.monotonic() - started))
        bought = datetime.now(UTC) - timedelta(days=180) + timedelta(seconds=room)
        the_purchase = purchase(customer, iso(bought), "99.99")
        deliver(own, store, [the_purchase])
        assert datetime.now(UTC) < bought + timedelta(days=180), "projected before the threshold passed"
        assert alert_rows(own) == [], "not raised ahead of time"

        relay = start("alerts", own, RAPPORT_ALERT_RAISE_INTERVAL_SECONDS="0.5")
        try:
            [(key, message, _)] = on_kafka(own, at_least=1, timeout=240)
        finally:
            stop(relay)
        passed = bought + timedelta(days=180)
        assert (key, message["kind"], message["reason"], message["event_id"]) == (
            customer, "at_risk", "no purchase for 180 days", None)
        assert message["alert_id"] == time_alert_id(AlertKind.AT_RISK, the_purchase["event_id"]), "named by its anchor"
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
            assert raise_due(conn, RaiserAndRelay(own).outbox) == 0, "the raiser finds nothing older either"

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
            raise_due(conn, RaiserAndRelay(own).outbox)
            conn.execute(f"DELETE FROM {ALERTS.name}")  # so that raising any of them again would show
            conn.commit()

        copy = projector(own, store, only=["lifecycle"], schema=REBUILD_SCHEMA)
        build_copy(copy)
        report = compare_and_swap(projector(own, store, only=["lifecycle"]), copy)
        assert report.swapped and report.same, report
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


def test_a_merge_does_not_raise_a_change_by_time_again_under_the_surviving_customer_id(settings: Settings) -> None:
    with world(settings, "merge_time") as own, store_of(own) as store:
        account, email = new_customer_id(), f"m.{uuid.uuid4().hex[:10]}@example.com"
        by_email = {"event_id": f"order:{uuid.uuid4().hex}", "type": "purchase", "occurred_at": ago(days=185),
                    "customer": {"email": email}, "source": "tests",
                    "data": {"order_id": "o-7", "amount": "12.00", "currency": "USD"}}
        deliver(own, store, [by_email])  # at risk by the passing of time 5 days ago: news, raised at once
        [before] = alert_rows(own)
        assert (before["kind"], before["event_id"]) == ("at_risk", None) and before["customer_id"] != account
        assert before["alert_id"] == time_alert_id(AlertKind.AT_RISK, by_email["event_id"])

        # The account shows the same email on an earlier call: one customer, the account's; the same
        # purchase is still the latest, so the same change by time.
        deliver(own, store, [envelope(account, "call", ago(days=200), CALL, email=email)])
        with psycopg.connect(conninfo(own)) as conn:
            owner = conn.execute("SELECT DISTINCT customer_id FROM lifecycle_facts WHERE event_id = %s",
                                 (by_email["event_id"],)).fetchall()
            [(stage, by_time)] = conn.execute("SELECT stage, event_id IS NULL FROM lifecycle_intervals "
                                              "WHERE customer_id = %s AND during @> now()", (account,)).fetchall()
        assert owner == [(account,)] and (stage, by_time) == ("at_risk", True), "refolded under the account"
        assert alert_rows(own) == [before], "and its change by time was not raised again"


def test_an_alarm_answer_dated_a_little_ahead_of_the_database_clock_is_raised_at_once(settings: Settings) -> None:
    with world(settings, "ahead") as own, store_of(own) as store:
        ahead, earlier = new_customer_id(), new_customer_id()
        answer = alarm(ahead, iso(datetime.now(UTC) + timedelta(minutes=2)))
        deliver(own, store, [answer, alarm(earlier, ago(hours=1))])
        assert {(r["customer_id"], r["kind"], r["alert_id"]) for r in alert_rows(own, [ahead])} == {
            (ahead, "alarm_answer", event_alert_id(answer["event_id"]))}, "due at once, as an alarm answer"

        with psycopg.connect(conninfo(own), row_factory=dict_row) as conn:
            conn.execute(f"DELETE FROM {ALERTS.name} WHERE customer_id = %s", (earlier,))
            conn.commit()
            assert raise_due(conn, RaiserAndRelay(own).outbox) == 0, \
                "the raiser takes changes by time only (an event's at_risk is the projector's, as an alarm answer)"
        assert alert_rows(own, [earlier]) == []


def test_an_alert_published_once_is_not_published_again_when_its_row_comes_back(settings: Settings) -> None:
    with world(settings, "restored") as own, store_of(own) as store:
        deliver(own, store, [alarm(new_customer_id(), ago(hours=1))])
        relay_all(own)
        [row] = alert_rows(own)
        with psycopg.connect(conninfo(own)) as conn:  # as a restored database, or a commit lost and made again
            conn.execute(f"DELETE FROM {ALERTS.name}")
            conn.execute(f"INSERT INTO {ALERTS.name} (alert_id, customer_id, kind, reason, occurred_at, raised_at, "
                         "event_id, revenue, last_contact_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         (row["alert_id"], row["customer_id"], row["kind"], row["reason"], row["occurred_at"],
                          row["raised_at"], row["event_id"], json.dumps(row["revenue"]), row["last_contact_at"]))
        again = relay_all(own)
        assert again.published == 0 and len(on_kafka(own)) == 1
        [back] = alert_rows(own)
        assert (back["kafka_partition"], back["kafka_offset"]) == (row["kafka_partition"], row["kafka_offset"])


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
