"""Tamper evidence (issue 13, contract §5): every stored event is hashed over its stored bytes and
chained to its customer's previous event in ingest's transaction; `verify` re-checks every chain
and names each altered, removed, reordered or inserted row by customer and position.

The expected hashes are computed here from the rows with hashlib, independently of the code."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from domain.customer import Customer, customer_id_for
from eventstore.store import InteractionLog
from services import audit
from services.settings import Settings
from tests import support
from tests.support import deliver, envelope

pytestmark = pytest.mark.integration

ZEROS = bytes(32)


def expected_chain(rows: list[tuple[UUID, int, str, bytes]]) -> list[bytes]:
    """SHA-256 over (previous hash, stream id, version as 8 bytes, topic length as 4 bytes, topic, state)."""
    hashes, previous = [], {}
    for originator_id, version, topic, state in rows:
        digest = hashlib.sha256(previous.get(originator_id, ZEROS) + originator_id.bytes
                                + version.to_bytes(8, "big") + len(topic.encode()).to_bytes(4, "big")
                                + topic.encode() + state).digest()
        previous[originator_id] = digest
        hashes.append(digest)
    return hashes


def calls(customer: str, n: int, first: int = 1) -> list[dict[str, Any]]:
    return [envelope(customer, "call", f"2025-03-{day:02d}T10:00:00Z", {"direction": "inbound", "duration_seconds": day},
                     event_id=f"{customer}:call:{day}") for day in range(first, first + n)]


def rows_of(conn: psycopg.Connection[Any], customers: list[str]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT originator_id, originator_version, topic, state, hash FROM rapport_events "
        "WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version",
        ([customer_id_for(c) for c in customers],),
    ).fetchall()


@pytest.fixture
def own_database(settings: Settings) -> Iterator[Settings]:
    """Settings on a database of this test alone: tampering must not touch other tests' rows."""
    with support.own_database(settings, "rapport_test_chain") as own:
        yield own


@pytest.fixture
def own_store(own_database: Settings) -> Iterator[InteractionLog]:
    from services.bootstrap import interaction_log

    log = interaction_log(own_database)
    yield log
    log.close()


def connect(settings: Settings) -> psycopg.Connection[Any]:
    return psycopg.connect(psycopg.conninfo.make_conninfo(**settings.database), autocommit=True)


def test_ingest_links_every_event_to_the_previous_one_of_its_customer(settings: Settings, store: InteractionLog) -> None:
    tag = uuid.uuid4().hex[:8]
    customers = [f"chain-{tag}-a", f"chain-{tag}-b"]
    deliver(settings, store, calls(customers[0], 3) + calls(customers[1], 2))
    # A second consumer knows no stream yet: it reads each stream's head from the store.
    deliver(settings, store, calls(customers[0], 2, first=10))
    with connect(settings) as conn:
        rows = rows_of(conn, customers)
        assert [r[1] for r in rows if r[0] == customer_id_for(customers[0])] == [1, 2, 3, 4, 5, 6]
        assert [r[4] for r in rows] == expected_chain([r[:4] for r in rows])
        for customer in customers:
            result = audit.verify(conn, customer)
            assert result.ok and result.broken == []
            assert result.events_checked == len([r for r in rows if r[0] == customer_id_for(customer)])


def test_the_librarys_own_save_links_events_too(settings: Settings, store: InteractionLog) -> None:
    from domain.contract import validate_envelope

    key = f"chain-save-{uuid.uuid4().hex[:8]}"
    customer = Customer(key)
    for message in calls(key, 3):
        customer.record(validate_envelope(message))
    store.save(customer)
    customer.record(validate_envelope(calls(key, 1, first=20)[0]))
    store.save(customer)
    with connect(settings) as conn:
        rows = rows_of(conn, [key])
        assert len(rows) == 5
        assert [r[4] for r in rows] == expected_chain([r[:4] for r in rows])


def test_verify_names_each_tampered_row_by_customer_and_position(own_database: Settings,
                                                                 own_store: InteractionLog) -> None:
    names = ["altered", "removed", "swapped", "inserted", "truncated", "rewritten", "intact"]
    customers = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in names}
    deliver(own_database, own_store, [m for c in customers.values() for m in calls(c, 4)])  # positions 1..5
    with connect(own_database) as conn:
        kept = list(audit.heads(conn))
        assert audit.verify(conn).ok

        def stream(name: str) -> UUID:
            return customer_id_for(customers[name])

        conn.execute("UPDATE rapport_events SET state = convert_to(replace(convert_from(state, 'UTF8'), "
                     "'inbound', 'outbound'), 'UTF8') WHERE originator_id = %s AND originator_version = 3",
                     (stream("altered"),))
        conn.execute("DELETE FROM rapport_events WHERE originator_id = %s AND originator_version = 2",
                     (stream("removed"),))
        conn.execute("UPDATE rapport_events SET originator_version = -originator_version WHERE originator_id = %s "
                     "AND originator_version IN (2, 3)", (stream("swapped"),))
        conn.execute("UPDATE rapport_events SET originator_version = CASE originator_version WHEN -2 THEN 3 ELSE 2 END "
                     "WHERE originator_id = %s AND originator_version < 0", (stream("swapped"),))
        forged = json.dumps({"event_id": "forged-1", "customer": {"id": customers["inserted"]}}).encode()
        conn.execute("INSERT INTO rapport_events (originator_id, originator_version, topic, state, hash) "
                     "VALUES (%s, 6, 'domain.customer:Customer.CallLogged', %s, %s)",
                     (stream("inserted"), forged, hashlib.sha256(forged).digest()))
        conn.execute("DELETE FROM rapport_events WHERE originator_id = %s AND originator_version = 5",
                     (stream("truncated"),))
        # A writer who knows the rule rewrites a whole tail with fresh hashes: the chain holds,
        # only the heads kept earlier show it.
        rows = rows_of(conn, [customers["rewritten"]])
        changed = [(r[0], r[1], r[2], r[3].replace(b"inbound", b"outbound") if r[1] == 4 else r[3]) for r in rows]
        for (originator_id, version, _, state), digest in zip(changed, expected_chain(changed), strict=True):
            conn.execute("UPDATE rapport_events SET state = %s, hash = %s WHERE originator_id = %s "
                         "AND originator_version = %s", (state, digest, originator_id, version))

        result = audit.verify(conn)
        found = {(f.customer_id, f.position, f.problem) for f in result.broken}
        with ConnectionPool(psycopg.conninfo.make_conninfo(**own_database.database), min_size=2,
                            kwargs={"autocommit": True}) as pool:  # slices checked side by side
            side_by_side = audit.verify(pool, workers=2, events_per_slice=5)
        assert {(f.customer_id, f.position, f.problem) for f in side_by_side.broken} == found
        assert side_by_side.events_checked == result.events_checked
        assert found == {
            (customers["altered"], 3, "altered"),
            (customers["removed"], 2, "removed"),
            (customers["swapped"], 2, "reordered"),
            (customers["swapped"], 3, "reordered"),
            (customers["inserted"], 6, "inserted"),
            (customers["truncated"], 5, "removed"),
        }
        assert not result.ok
        assert result.events_checked == 7 * 5 - 1 + 1 - 1  # one removed, one inserted, one truncated
        swapped = {f.position: f.detail for f in result.broken if f.customer_id == customers["swapped"]}
        assert "recorded at position 3" in swapped[2] and "recorded at position 2" in swapped[3]
        truncated = next(f for f in result.broken if f.customer_id == customers["truncated"])
        assert f"{customers['truncated']}:call:4" in truncated.detail  # the 4th call sat at position 5

        by_heads = {(f.customer_id, f.position, f.problem) for f in audit.check_heads(conn, kept)}
        assert (customers["rewritten"], 5, "altered") in by_heads
        assert (customers["truncated"], 5, "removed") in by_heads
        assert not any(f[0] == customers["intact"] for f in by_heads)


def test_a_store_made_before_the_chain_is_linked_on_upgrade(own_database: Settings, own_store: InteractionLog) -> None:
    from services.bootstrap import interaction_log

    key = f"upgrade-{uuid.uuid4().hex[:6]}"
    deliver(own_database, own_store, calls(key, 3))
    with connect(own_database) as conn:
        conn.execute("ALTER TABLE rapport_events DROP COLUMN hash")
    interaction_log(own_database).close()  # a new release starts
    deliver(own_database, own_store, calls(key, 2, first=10))  # and ingest goes on
    with connect(own_database) as conn:
        rows = rows_of(conn, [key])
        assert len(rows) == 6
        assert [r[4] for r in rows] == expected_chain([r[:4] for r in rows])
        assert audit.verify(conn).ok


def test_the_audit_routes_show_the_chain_and_the_verification(settings: Settings, store: InteractionLog,
                                                             client: TestClient) -> None:
    key = f"chain-http-{uuid.uuid4().hex[:8]}"
    deliver(settings, store, calls(key, 4))
    body = client.get(f"/audit/customers/{key}/events").json()
    items = body["items"]
    assert [i["position"] for i in items] == [1, 2, 3, 4, 5]
    assert [i["type"] for i in items] == ["registered", "call", "call", "call", "call"]
    assert [i["event_id"] for i in items[1:]] == [f"{key}:call:{d}" for d in range(1, 5)]
    assert items[2]["occurred_at"] == "2025-03-02T10:00:00Z"
    assert items[2]["data"]["direction"] == "inbound"
    assert all(i["recorded_at"] and i["recorded_at"].endswith("Z") for i in items)
    assert items[0]["previous_hash"] == "00" * 32
    assert [i["previous_hash"] for i in items[1:]] == [i["hash"] for i in items[:-1]]
    with connect(settings) as conn:
        assert [i["hash"] for i in items] == [r[4].hex() for r in rows_of(conn, [key])]

    first = client.get(f"/audit/customers/{key}/events", params={"limit": 2}).json()
    second = client.get(f"/audit/customers/{key}/events", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [i["position"] for i in first["items"] + second["items"]] == [1, 2, 3, 4]
    assert second["items"][0]["previous_hash"] == first["items"][-1]["hash"]

    verified = client.get("/audit/verify", params={"customer": key})
    assert verified.status_code == 200
    assert verified.json() == {"events_checked": 5, "ok": True, "broken": []}
    assert client.get("/audit/verify", params={"customer": "nobody-" + key}).status_code == 404
    missing = client.get(f"/audit/customers/nobody-{key}/events")
    assert missing.status_code == 404 and "nobody-" in missing.json()["detail"]
    heads = client.get("/audit/heads").json()
    assert heads["streams"] >= 1 and len(heads["digest"]) == 64
