"""Erasure by crypto-shredding (issue 15 §2): after `forget`, the customer's personal data is in no
answer, read model, point-in-time view, audit view, export or rebuild, while counts, revenue,
stages and the hash chains hold; ingest and the projector go on across it."""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from eventstore import tables
from eventstore.store import InteractionLog
from services.audit_cli import cmd_export
from services.bootstrap import conninfo, projector
from services.projections_cli import cmd_replay, rebuild
from services.settings import Settings
from tests.support import deliver, drain, publish

pytestmark = pytest.mark.integration


def story(tag: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """A customer with every kind of personal field, and its events."""
    who = {"id": f"crm-{tag}", "email": f"Zoe.{tag}@Example.org", "phone": f"+9477{int(tag[:6], 16) % 10**7:07d}",
           "name": f"Zoe Quill-{tag}"}
    events = [
        {"event_id": f"{tag}:c1", "type": "call", "occurred_at": "2026-01-05T10:00:00Z", "customer": who,
         "data": {"direction": "inbound", "duration_seconds": 30, "agent": "kasun", "note": f"callback {tag}"}},
        {"event_id": f"{tag}:e1", "type": "email", "occurred_at": "2026-01-06T10:00:00Z", "customer": who,
         "data": {"direction": "inbound", "subject": f"my order {tag}"}, "ticket": f"T-{tag}"},
        {"event_id": f"{tag}:p1", "type": "purchase", "occurred_at": "2026-01-07T10:00:00Z", "customer": who,
         "data": {"order_id": f"o-{tag}", "amount": "42.50", "currency": "EUR"}},
        {"event_id": f"{tag}:p2", "type": "purchase", "occurred_at": "2026-02-07T10:00:00Z", "customer": who,
         "data": {"order_id": f"o2-{tag}", "amount": "7.50", "currency": "EUR"}},
        {"event_id": f"{tag}:s1", "type": "survey_response", "occurred_at": "2026-02-08T10:00:00Z",
         "customer": {"id": who["id"], "email": who["email"]},
         "data": {"kind": "nps", "score": 3, "comment": f"slow delivery {tag}"}},
    ]
    return who, events


def personal_values(who: dict[str, str], tag: str) -> list[str]:
    return [who["name"], who["email"], who["email"].lower(), who["phone"], f"my order {tag}", f"slow delivery {tag}",
            f"callback {tag}", f"T-{tag}"]


def shows(answer: Any, values: list[str]) -> list[str]:
    text = json.dumps(answer) if not isinstance(answer, str) else answer
    return [v for v in values if v in text]


def pg_dump(settings: Settings) -> str:
    """A full plain-SQL dump of the test's database, as an operator's backup would be."""
    binary = shutil.which("pg_dump") or sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))[-1]
    db = settings.database
    result = subprocess.run([binary, "--no-owner", "-h", db["host"], "-p", db["port"], "-U", db["user"], db["dbname"]],
                            capture_output=True, text=True, env={**os.environ, "PGPASSWORD": db["password"]}, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_forget_erases_personal_data_everywhere_and_keeps_the_figures(settings: Settings, store: InteractionLog,
                                                                      client: TestClient, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    who, events = story(tag)
    other, other_events = story(uuid.uuid4().hex[:10])
    deliver(settings, store, events + other_events)
    customer = who["id"]
    values = personal_values(who, tag)
    before = client.get(f"/customers/{customer}").json()
    # As written in `emails`, normalised in `identity.identifiers`.
    assert set(shows(before, values)) == {who["name"], who["email"], who["email"].lower(), who["phone"]}
    timeline = client.get(f"/customers/{customer}/timeline").json()
    assert set(shows(timeline, values)) == {f"my order {tag}", f"slow delivery {tag}", f"callback {tag}"}
    stages = client.get("/lifecycle/stages").json()["stages"]
    revenue = client.get("/satisfaction/revenue-by-category").json()
    verified = client.get("/audit/verify").json()
    assert verified["ok"]
    with psycopg.connect(conninfo(settings)) as conn:  # personal fields are never stored in clear
        stored = conn.execute(f"SELECT string_agg(convert_from(state, 'UTF8'), ' ') FROM {tables.EVENTS}").fetchone()[0]
    assert shows(stored, values) == []

    forgotten = client.post(f"/customers/{customer}/forget", json={"reason": "ticket GDPR-1"})
    assert forgotten.status_code == 200, forgotten.text
    assert forgotten.json()["keys_destroyed"] >= 1

    after = client.get(f"/customers/{customer}").json()
    assert shows(after, values) == []
    assert after["name"] is None and after["emails"] == [] and after["phones"] == []
    for field in ("interaction_counts", "purchases", "satisfaction", "lifecycle", "first_seen_at", "last_seen_at"):
        assert after[field] == before[field], field
    assert shows(client.get(f"/customers/{customer}/timeline").json(), values) == []
    assert len(client.get(f"/customers/{customer}/timeline").json()["items"]) == len(events)
    assert client.get("/lifecycle/stages").json()["stages"] == stages
    assert client.get("/satisfaction/revenue-by-category").json()["categories"] == revenue["categories"]
    assert client.get("/audit/verify").json()["ok"], "the chains hold: they are over the stored bytes"
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    for point in ("as_of=2026-02-01T00:00:00Z", f"known_at={now}"):
        assert client.get(f"/customers/{customer}?{point}").status_code == 200, point
        assert shows(client.get(f"/customers/{customer}?{point}").json(), values) == [], point
        assert shows(client.get(f"/customers/{customer}/timeline?{point}").json(), values) == [], point
    audit_events = client.get(f"/audit/customers/{customer}/events").json()["items"]
    assert shows(audit_events, values) == [] and audit_events[-1]["type"] == "forgotten"
    exported = tmp_path / "evidence.jsonl"
    assert cmd_export(argparse.Namespace(customer=customer, as_of=None, known_at=now, format="jsonl",
                                         output=exported), settings) == 0
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert lines[0]["chain_ok"] and shows(lines[1:-1], values) == []
    assert shows(lines[-1]["view"], values) == []

    # The other customer keeps everything.
    assert client.get(f"/customers/{other['id']}").json()["name"] == other["name"]
    # A rebuild from the event store cannot bring it back.
    rebuild(settings, store, "customer_360")
    rebuild(settings, store, "timeline")
    assert shows(client.get(f"/customers/{customer}").json(), values) == []
    assert shows(client.get(f"/customers/{customer}/timeline").json(), values) == []
    assert client.get(f"/customers/{customer}").json()["purchases"] == before["purchases"]
    # A replay as known now, beside the live read models, cannot either.
    side = f"replay_{tag}"
    assert cmd_replay(argparse.Namespace(name="all", known_at=now, schema=side), settings) == 0
    with psycopg.connect(conninfo(settings)) as conn:
        replayed = conn.execute(f"SELECT row_to_json(c)::text FROM {side}.customer_360 c WHERE customer_id = %s",  # noqa: S608
                                (customer,)).fetchone()
        conn.execute(f"DROP SCHEMA {side} CASCADE")
        conn.commit()
    assert replayed is not None and shows(replayed[0], values) == [] and json.loads(replayed[0])["purchase_count"] == 2
    # Nowhere in the database: events, read models, identity (keyed hashes), caches, dead letters, logs.
    dump = pg_dump(settings)
    assert shows(dump, values) == []
    assert shows(dump, personal_values(other, other["id"][4:])) != [], "the dump holds the personal data of others"


def test_ingest_and_projector_go_on_across_a_forget(settings: Settings, store: InteractionLog, client: TestClient) -> None:
    from services.bootstrap import ingest_consumer

    tag = uuid.uuid4().hex[:10]
    who, events = story(tag)
    deliver(settings, store, events)
    assert client.post(f"/customers/{who['id']}/forget", json={}).status_code == 200
    # The person writes again: a new fact under a new key; what was forgotten stays forgotten.
    again = {**events[1], "event_id": f"{tag}:e2", "occurred_at": "2026-03-01T10:00:00Z",
             "customer": {"id": who["id"], "name": "Zoe New"}, "data": {"direction": "inbound", "subject": "hello again"}}
    later, _ = story(uuid.uuid4().hex[:10])
    publish(settings, [again, *story(later["id"][4:])[1]])
    consumer = ingest_consumer(settings, store)
    drain(consumer, settings)
    assert consumer.stats.dead_lettered == 0
    projector(settings, store).catch_up()
    view = client.get(f"/customers/{who['id']}").json()
    assert view["name"] == "Zoe New" and view["interaction_counts"]["email"] == 2
    assert shows(view, personal_values(who, tag)) == []
    assert client.get(f"/customers/{later['id']}").json()["interaction_counts"]["purchase"] == 2


def test_forget_names_what_is_wrong(client: TestClient) -> None:
    missing = client.post("/customers/nobody-at-all/forget", json={})
    assert missing.status_code == 404 and "no customer 'nobody-at-all'" in missing.json()["detail"]


def test_a_customer_known_only_by_email_and_phone_is_forgotten_too(settings: Settings, store: InteractionLog,
                                                                   client: TestClient) -> None:
    tag = uuid.uuid4().hex[:10]
    who, events = story(tag)
    anonymous = [{**e, "customer": {k: v for k, v in e["customer"].items() if k != "id"}} for e in events]
    anonymous[-1]["customer"] = {"email": who["email"]}
    deliver(settings, store, anonymous)
    customer = client.get("/customers/lookup", params={"email": who["email"]}).json()["customer_id"]
    assert customer.startswith("rc-") and client.get(f"/customers/{customer}").json()["name"] == who["name"]
    assert client.post(f"/customers/{customer}/forget", json={}).status_code == 200
    values = personal_values(who, tag)
    assert shows(client.get(f"/customers/{customer}").json(), values) == []
    assert shows(pg_dump(settings), values) == []
    # Its identifiers still find it (as keyed hashes), and say nothing more.
    found = client.get("/customers/lookup", params={"phone": who["phone"]}).json()
    assert found["customer_id"] == customer and shows(found, values) == []
