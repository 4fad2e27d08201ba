"""Two ingest processes racing on the same persons give the customers of one process (issue 14).

20,000 events of 2,000 persons, each event naming its person by a random part of the person's
account id, email and phone (written in varying case and spacing), are keyed as the contract says
(id, else email, else phone), so one person's events land in several of the topic's 6 partitions
and two `rapport ingest` processes of one consumer group decide about the same customers at the
same time. A few "household" events give a person's account with another person's email. The
result must equal that of one process reading the same topic, and that of `domain.identity.resolve`
over every event's links: no identifier owned by two customers, no merge lost, no customer left
live with nothing, every event stored once, and the identity events on the customers' streams
telling, move after move, the story the identity tables end with.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumers.ingest import kafka_producer
from domain.contract import parse_envelope
from domain.customer import EVENT_CLASS_BY_TYPE
from domain.identity import Identifier, Link, generated_id, identifiers_of, links_of, resolve
from eventstore import tables
from eventstore.identity import parse_identifier
from eventstore.store import InteractionLog, kafka_position_name
from services.settings import Settings
from tests.conftest import settings_env
from tests.support import end_offsets, own_database, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEED = 14
PERSONS = 2_000
EVENTS = 20_000
HOUSEHOLD_SHARE = 0.02
MAX_POLL_RECORDS = "500"  # small batches: the two processes' decisions interleave
START = datetime(2025, 1, 1, tzinfo=UTC)
YEAR_SECONDS = 365 * 24 * 3600
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-4))]
INTERACTION_CLASSES = [cls.__qualname__ for cls in EVENT_CLASS_BY_TYPE.values()]  # Customer.CallLogged, ...


# -- the input ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Person:
    account: str
    email: str  # lower case; written in varying case
    digits: str  # 7 digits after +94 77; written in varying spacing


def persons(rng: random.Random) -> list[Person]:
    numbers = rng.sample(range(10**7), PERSONS)
    return [Person(f"crm-race-{i:05d}", f"person.{i:05d}.{rng.choice(['ana', 'bo', 'cy'])}@example.com",
                   f"{numbers[i]:07d}") for i in range(PERSONS)]


def written_email(rng: random.Random, email: str) -> str:
    style = rng.randrange(4)
    if style == 0:
        return email
    if style == 1:
        return email.upper()
    if style == 2:
        return email.title()
    return "".join(c.upper() if rng.random() < 0.5 else c for c in email)


def written_phone(rng: random.Random, digits: str) -> str:
    return rng.choice([f"+9477{digits}", f"+94 77 {digits[:3]} {digits[3:]}", f"+94-77-{digits[:3]}-{digits[3:]}"])


def data_of(rng: random.Random, kind: str, n: int) -> dict[str, Any]:
    if kind == "call":
        return {"direction": rng.choice(["inbound", "outbound"]), "duration_seconds": rng.randrange(0, 3600),
                "outcome": rng.choice(["resolved", "unresolved", "voicemail", "no_answer"])}
    if kind == "email":
        return {"direction": rng.choice(["inbound", "outbound"]), "subject": f"subject {n}"}
    if kind == "purchase":
        return {"order_id": f"race-o-{n:06d}", "amount": f"{rng.randrange(1, 100_000) / 100:.2f}", "currency": "USD"}
    survey = rng.choice(["nps", "csat"])
    return {"kind": survey, "score": rng.randint(0, 10) if survey == "nps" else rng.randint(1, 5)}


def generate() -> tuple[list[dict[str, Any]], int]:
    """The events, in publishing order (not event-time order), and how many are households."""
    rng = random.Random(SEED)
    people = persons(rng)
    subsets = [("id",), ("email",), ("phone",), ("id", "email"), ("id", "phone"), ("email", "phone"),
               ("id", "email", "phone")]
    messages: list[dict[str, Any]] = []
    households = 0
    for n in range(EVENTS):
        person = rng.choice(people)
        if rng.random() < HOUSEHOLD_SHARE:
            other = rng.choice([p for p in rng.sample(people, 2) if p is not person])
            customer = {"id": person.account, "email": written_email(rng, other.email)}
            households += 1
        else:
            customer = {}
            for kind in rng.choice(subsets):
                customer[kind] = (person.account if kind == "id" else written_email(rng, person.email)
                                  if kind == "email" else written_phone(rng, person.digits))
        moment = START + timedelta(seconds=rng.randrange(YEAR_SECONDS))  # in random order: not event time
        zone = rng.choice(ZONES)
        occurred_at = moment.astimezone(zone).isoformat().replace("+00:00", "Z")
        kind = rng.choice(list(EVENT_CLASS_BY_TYPE))
        messages.append({"event_id": f"race:{kind}:{n:06d}", "type": kind, "occurred_at": occurred_at,
                         "customer": customer, "source": "race-test", "data": data_of(rng, kind, n)})
    return messages, households


def key_of(message: dict[str, Any]) -> bytes:
    customer = message["customer"]
    return (customer.get("id") or customer.get("email") or customer.get("phone")).encode()


def expected_links(messages: list[dict[str, Any]], key: bytes) -> list[Link]:
    """Every event's links, read from the envelopes as ingest reads them (emails and phones hashed under `key`)."""
    links: list[Link] = []
    for message in messages:
        envelope = parse_envelope(json.dumps(message).encode())
        links += links_of(identifiers_of(envelope.customer.__dict__, key=key), envelope.occurred_at, envelope.event_id)
    return links


def publish_keyed(settings: Settings, messages: list[dict[str, Any]]) -> None:
    producer = kafka_producer(settings.kafka_client_config)
    try:
        for message in messages:
            producer.send(settings.topic, key=key_of(message), value=json.dumps(message).encode())
        producer.flush()
    finally:
        producer.close()


# -- the worlds ---------------------------------------------------------------------------------
@dataclass
class Ingest:
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def ingest_processes(world: Settings, count: int, logs: Path) -> Iterator[list[Ingest]]:
    """`count` × `rapport ingest` in one consumer group, started together; SIGTERM at the end."""
    env = settings_env(world, RAPPORT_INGEST_MAX_POLL_RECORDS=MAX_POLL_RECORDS, RAPPORT_LOG_LEVEL="INFO")
    started: list[Ingest] = []
    try:
        for i in range(count):
            log = logs / f"ingest-{i}.log"
            with log.open("wb") as out:
                process = subprocess.Popen([sys.executable, "-m", "services.cli", "ingest"], cwd=ROOT, env=env,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            started.append(Ingest(process, log))
        yield started
    finally:
        for ingest in started:
            if ingest.process.poll() is None:
                ingest.process.send_signal(signal.SIGTERM)
        for ingest in started:
            try:
                ingest.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                ingest.process.kill()
                ingest.process.wait()


@contextmanager
def world_of_its_own(settings: Settings, prefix: str) -> Iterator[Settings]:
    """`own_database` with a consumer group of its own."""
    with own_database(settings, prefix) as own:
        yield own.model_copy(update={"consumer_group": f"{settings.consumer_group}-{prefix}"})


def stored_positions(world: Settings) -> dict[int, int]:
    names = {kafka_position_name(world.topic, p): p for p in range(64)}
    try:
        with psycopg.connect(world.database_url) as conn:
            rows = conn.execute(f"SELECT application_name, notification_id FROM {tables.KAFKA_POSITIONS} "
                                "WHERE application_name = ANY(%s)", (list(names),)).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}  # ingest has not made the schema yet
    except psycopg.OperationalError:
        return {}  # PostgreSQL restarting (the stack is shared): ingest waits for it too
    return {names[name]: offset for name, offset in rows}


def run_world(world: Settings, count: int, logs: Path, targets: dict[int, int]) -> tuple[float, list[str]]:
    """Ingest the whole topic into `world`'s database with `count` processes; their logs."""
    logs.mkdir()
    began = time.monotonic()
    with ingest_processes(world, count, logs) as processes:
        def caught_up() -> bool:
            for ingest in processes:
                assert ingest.process.poll() is None, (
                    f"an ingest process exited with {ingest.process.returncode}:\n{ingest.text()[-6000:]}")
            stored = stored_positions(world)
            return all(end == 0 or stored.get(p, -1) + 1 >= end for p, end in targets.items())

        wait_for(caught_up, timeout=150, interval=0.5, what=f"{count} ingest process(es) to reach the topic's end")
        elapsed = time.monotonic() - began
        for ingest in processes:
            ingest.process.send_signal(signal.SIGTERM)
        for ingest in processes:
            ingest.process.wait(timeout=60)
    texts = [ingest.text() for ingest in processes]
    for ingest, text in zip(processes, texts, strict=True):
        assert ingest.process.returncode == 0, f"ingest exited with {ingest.process.returncode}:\n{text[-6000:]}"
    return elapsed, texts


@dataclass
class Outcome:
    owners: dict[str, str]
    distinct_identifiers: int
    customers: dict[str, str | None]  # customer → merged_into
    versions: dict[str, int]
    interactions: int
    distinct_interactions: int
    interaction_ids: set[str]
    event_id_rows: int
    dead_letters: int


def outcome(world: Settings) -> Outcome:
    classes = [f"%:{name}" for name in INTERACTION_CLASSES]
    with psycopg.connect(world.database_url) as conn:
        owners = dict(conn.execute(f"SELECT identifier, customer_id FROM {tables.IDENTIFIERS}").fetchall())
        (distinct,) = conn.execute(f"SELECT count(DISTINCT identifier) FROM {tables.IDENTIFIERS}").fetchone()
        rows = conn.execute(f"SELECT customer_id, merged_into, version FROM {tables.IDENTITY_CUSTOMERS}").fetchall()
        ids = [row[0] for row in conn.execute(
            f"SELECT convert_from(state, 'UTF8')::jsonb->>'event_id' FROM {tables.EVENTS} WHERE topic LIKE ANY(%s)",
            (classes,)).fetchall()]
        (event_id_rows,) = conn.execute(f"SELECT count(*) FROM {tables.EVENT_IDS}").fetchone()
        (dead,) = conn.execute(f"SELECT count(*) FROM {tables.DEAD_LETTERS}").fetchone()
    return Outcome(owners, distinct, {c: into for c, into, _ in rows}, {c: v for c, _, v in rows}, len(ids),
                   len(set(ids)), set(ids), event_id_rows, dead)


def story_breaks(world: Settings, owners: dict[str, str], limit: int = 10) -> list[str]:
    """Where the identity events on the customers' streams contradict each other or the table: in
    the order they were stored, every `IdentifiersLeft` must take identifiers from the customer the
    one before sent them to (or that first got them), and the last one sends each where it is now."""
    with psycopg.connect(world.database_url) as conn:
        rows = conn.execute(
            "SELECT notification_id, convert_from(state, 'UTF8')::jsonb FROM " + tables.EVENTS + " "
            "WHERE topic LIKE %s ORDER BY notification_id", ("%:Customer.IdentifiersLeft",)).fetchall()
    breaks: list[str] = []
    went: dict[str, tuple[str, int, str]] = {}  # identifier → (customer it went to, notification, cause)
    for notification, state in rows:
        source, target = state["customer_id"], state["target"]
        for x in state["identifiers"]:
            if x in went and went[x][0] != source:
                breaks.append(f"{x} left {source} for {target} (notification {notification}, event "
                              f"{state['cause_event_id']}) but had gone to {went[x][0]} (notification {went[x][1]}, "
                              f"event {went[x][2]})")
            went[x] = (target, notification, state["cause_event_id"])
    breaks += [f"{x} went last to {to} (notification {n}) but is {owners.get(x)}'s"
               for x, (to, n, _) in went.items() if owners.get(x) != to]
    return breaks[:limit]


def differences(left: dict[str, str], right: dict[str, str], limit: int = 20) -> list[tuple[str, str | None, str | None]]:
    keys = sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))
    return [(k, left.get(k), right.get(k)) for k in keys[:limit]]


def landing(customers: dict[str, str | None], customer: str) -> str:
    """Where a customer merged away redirects now, following merges of merges."""
    seen = {customer}
    while (target := customers.get(customer)) is not None:
        assert target not in seen, f"merged_into makes a cycle through {customer}"
        seen.add(target)
        customer = target
    return customer


def totals(text: str) -> dict[str, int]:
    """Counts from the stopping line and the warnings of one ingest process's log."""
    found = {"events stored": 0, "batches retried": 0, "redecided": -1, "warnings": text.count("batch not stored")}
    stopping = [line for line in text.splitlines() if "stopping:" in line]
    if stopping:
        if match := re.search(r"(\d+) events stored", stopping[-1]):
            found["events stored"] = int(match.group(1))
        if match := re.search(r"(\d+) batches retried", stopping[-1]):
            found["batches retried"] = int(match.group(1))
        if match := re.search(r"(\d+) (?:batches )?(?:redecided|decided again)", stopping[-1]):
            found["redecided"] = int(match.group(1))
    return found


# -- the test -----------------------------------------------------------------------------------
def test_two_racing_ingest_processes_give_the_customers_of_one(settings: Settings, tmp_path: Path) -> None:
    messages, households = generate()
    links = expected_links(messages, settings.matching_key())
    expected = {str(x): c for x, c in resolve(links).customer_of.items()}
    assert len(messages) == EVENTS and households > 0
    assert len({key_of(m) for m in messages}) > 3 * PERSONS  # one person's events under several keys
    assert len(set(expected.values())) < len({x.anchor for x in links})  # merges happen

    publish_keyed(settings, messages)
    targets = end_offsets(settings)
    assert sum(targets.values()) == EVENTS and sum(1 for end in targets.values() if end) == 6

    with world_of_its_own(settings, "rapport_race_two") as two:
        two_seconds, two_logs = run_world(two, 2, tmp_path / "two", targets)
        raced = outcome(two)
        raced_story = story_breaks(two, raced.owners)
    with world_of_its_own(settings, "rapport_race_one") as one:
        one_seconds, one_logs = run_world(one, 1, tmp_path / "one", targets)
        alone = outcome(one)
        alone_story = story_breaks(one, alone.owners)

    counts = [totals(text) for text in two_logs]
    print(f"\n{EVENTS} events ({households} households) of {PERSONS} persons; {len(expected)} identifiers, "
          f"{len(set(expected.values()))} customers expected")
    print(f"two processes: {two_seconds:.1f} s; one process: {one_seconds:.1f} s")
    for i, (found, text) in enumerate(zip(counts, two_logs, strict=True)):
        redecided = found["redecided"] if found["redecided"] >= 0 else "not logged"
        print(f"racing process {i}: {found['events stored']} events stored, batches retried {found['batches retried']} "
              f"('batch not stored' warnings: {found['warnings']}), batches decided again in place: {redecided}")
        for line in [line for line in text.splitlines() if "batch not stored" in line][:5]:
            print(f"  {line}")
    print(f"single process: {totals(one_logs[0])}")
    for name, result, story in (("two processes", raced, raced_story), ("one process", alone, alone_story)):
        empty = sorted({c for c, into in result.customers.items() if into is None} - set(result.owners.values()))
        print(f"{name}: {len(differences(result.owners, expected, limit=10**6))} identifiers not with the expected "
              f"customer, {len(empty)} customers not merged away owning nothing {empty[:5]}, "
              f"{len(story)} breaks in the streams' identity story")
        for line in story[:5]:
            print(f"  {line}")
    # Both processes took part (each stored a share of the events).
    assert all(found["events stored"] > 0 for found in counts), counts
    for text in two_logs + one_logs:
        errors = [line for line in text.splitlines() if " ERROR rapport" in line or "Traceback" in line]
        assert not errors, "\n".join(errors[:20])

    # (d) every interaction stored exactly once, nothing dead-lettered
    event_ids = {m["event_id"] for m in messages}
    for name, result in (("two processes", raced), ("one process", alone)):
        assert result.dead_letters == 0, name
        assert (result.interactions, result.distinct_interactions, result.event_id_rows) == (EVENTS, EVENTS, EVENTS), name
        assert result.interaction_ids == event_ids, name
    # (e) one customer per identifier, every identifier of the input there
    for name, result in (("two processes", raced), ("one process", alone)):
        assert len(result.owners) == result.distinct_identifiers == len(expected), name
    # (a) the race changes nothing; (b) both are the rules' answer over every event's links
    assert raced.owners == alone.owners, differences(raced.owners, alone.owners)
    assert alone.owners == expected, differences(alone.owners, expected)
    assert raced.owners == expected, differences(raced.owners, expected)
    # (c) each customer not merged away owns identifiers, and each merged away redirects to one
    # that does; the same customers live in both
    generated_from = {generated_id(parse_identifier(x)): x for x in expected}
    live = {name: {c for c, into in result.customers.items() if into is None}
            for name, result in (("two", raced), ("one", alone))}
    for name, result in (("two", raced), ("one", alone)):
        owning = set(result.owners.values())
        empty = [(c, f"version {result.versions[c]}", f"generated from {generated_from.get(c)}",
                  f"whose customer is {expected.get(generated_from.get(c, ''))}") for c in sorted(live[name] - owning)]
        assert not empty, f"{name}: customers not merged away that own no identifier: {empty[:20]}"
        assert owning <= live[name], (name, sorted(owning - live[name])[:20])
        lost = {c: landing(result.customers, c) for c, into in result.customers.items()
                if into is not None and landing(result.customers, c) not in owning}
        assert not lost, (name, list(lost.items())[:20])
    assert live["two"] == live["one"], sorted(live["two"] ^ live["one"])[:20]
    # (f) the identity events on the streams tell the story of the table, move after move: a
    # decision made from owners another process had changed meanwhile would break it
    assert not alone_story, "one process:\n" + "\n".join(alone_story)
    assert not raced_story, "two processes:\n" + "\n".join(raced_story)


class _CommitDuring:
    """A connection whose first cursor runs `commit` (another process's decision, stored) just before
    the closure reads the customers' versions: the interleaving two ingest processes can meet."""

    def __init__(self, conn: Any, commit: Any) -> None:
        self.conn, self.commit = conn, commit

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        outer, cursor = self, self.conn.cursor(*args, **kwargs)

        class Cursor:
            def __enter__(self) -> Any:
                cursor.__enter__()
                return self

            def __exit__(self, *exc: Any) -> Any:
                return cursor.__exit__(*exc)

            def execute(self, query: Any, params: Any = None) -> Any:
                if outer.commit is not None and "SELECT customer_id, version" in query.as_string(outer.conn):
                    commit, outer.commit = outer.commit, None
                    commit()
                return cursor.execute(query, params)

            def __getattr__(self, name: str) -> Any:
                return getattr(cursor, name)

        return Cursor()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_a_decision_read_while_another_is_stored_is_made_again_not_stored_stale(store: InteractionLog) -> None:
    """A household account B showed A's email first in arrival order. One process stores email →
    phone (the phone joins B); the other stores A → email, earlier in event time, and reads its
    closure while the first commits. Its write must fail (decided again), not move the email alone."""
    from consumers.identity import plan_from
    from eventstore.identity import IdentityConflict

    tag = uuid.uuid4().hex[:8]
    a, b = Identifier("id", f"crm-a-{tag}"), Identifier("id", f"crm-b-{tag}")
    email, phone = Identifier("email", f"a-{tag}@example.com"), Identifier("phone", f"+9477{int(tag[:6], 16) % 10**7:07d}")
    at = [datetime(2025, month, 1, tzinfo=UTC) for month in range(1, 13)]
    household = [Link(at[11], f"{tag}:h", b), Link(at[11], f"{tag}:h", b, email)]
    first = [Link(at[2], f"{tag}:1", email), Link(at[2], f"{tag}:1", email, phone)]
    second = [Link(at[1], f"{tag}:2", a), Link(at[1], f"{tag}:2", a, email)]
    tables, datastore = store.interactions.identity, store.interactions.datastore

    def decide_and_store(links: list[Link], during: Any = None) -> None:
        with datastore.get_connection() as conn:
            state = tables.closure(_CommitDuring(conn, during) if during else conn,
                                   {x for link in links for x in (link.anchor, link.other) if x})
        plan = plan_from(state, links)
        with datastore.transaction(commit=True) as curs:
            tables.write(curs, plan.writes)

    decide_and_store(household)
    with pytest.raises(IdentityConflict):
        decide_and_store(second, during=lambda: decide_and_store(first))
    decide_and_store(second)  # decided again, on what is stored now
    with datastore.get_connection() as conn:
        stored = tables.customer_of(conn, [a, b, email, phone])
    assert stored == resolve(household + first + second).customer_of == {
        a: a.value, b: b.value, email: a.value, phone: a.value}
