"""`rapport audit export CUSTOMER [--as-of T] [--known-at T] [--format jsonl|csv]` (issue 13, point 3):
the evidence of one customer, every stored event with its hash and recorded time, and the view."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from eventstore.store import InteractionLog
from services.audit_cli import cmd_export
from services.settings import Settings
from tests.support import deliver, envelope, iso

pytestmark = pytest.mark.integration


def export(settings: Settings, customer: str, path: Path, fmt: str = "jsonl", as_of: str | None = None,
           known_at: str | None = None) -> int:
    return cmd_export(argparse.Namespace(customer=customer, as_of=as_of, known_at=known_at, format=fmt, output=path),
                      settings)


def test_export_holds_every_event_its_chain_and_the_view_at_that_time(
        settings: Settings, store: InteractionLog, client: TestClient, tmp_path: Path) -> None:
    key = f"export-{uuid.uuid4().hex[:8]}"
    deliver(settings, store, [
        envelope(key, "purchase", "2025-06-01T10:00:00Z", {"order_id": "o-1", "amount": "20.00", "currency": "EUR"},
                 event_id=f"{key}:p1"),
        envelope(key, "call", "2025-06-02T10:00:00Z", {"direction": "inbound", "duration_seconds": 30},
                 event_id=f"{key}:c1"),
    ])
    known_at = datetime.now(UTC)
    time.sleep(0.01)
    deliver(settings, store, [  # late: occurred first, recorded after known_at
        envelope(key, "survey_response", "2025-05-01T10:00:00Z", {"kind": "nps", "score": 10}, event_id=f"{key}:s1"),
    ])

    path = tmp_path / "evidence.jsonl"
    assert export(settings, key, path, known_at=iso(known_at)) == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    header, events, last = lines[0], lines[1:-1], lines[-1]
    assert header["kind"] == "export" and header["customer_id"] == key and header["chain_ok"] is True
    assert header["as_of"] is None and header["known_at"].startswith(known_at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert header["events"] == 4 and header["included"] == 2
    assert [e["position"] for e in events] == [1, 2, 3, 4]
    assert [e["event_id"] for e in events] == [None, f"{key}:p1", f"{key}:c1", f"{key}:s1"]
    assert [e["included"] for e in events] == [False, True, True, False]
    assert all(e["recorded_at"] for e in events)
    # The chain can be re-checked from the file alone: each previous_hash is the hash before it.
    assert events[0]["previous_hash"] == "00" * 32
    assert [e["previous_hash"] for e in events[1:]] == [e["hash"] for e in events[:-1]]
    assert all(len(bytes.fromhex(e["hash"])) == hashlib.sha256().digest_size for e in events)
    # The view is the API's at that point in time: the late NPS answer was not known yet.
    assert last["kind"] == "view"
    assert last["view"] == client.get(f"/customers/{key}", params={"known_at": iso(known_at)}).json()
    assert last["view"]["satisfaction"]["responses"] == 0
    assert last["view"]["purchases"]["revenue"] == {"EUR": "20.00"}

    as_of = tmp_path / "as_of.csv"
    assert export(settings, key, as_of, fmt="csv", as_of="2025-06-01T12:00:00Z") == 0
    rows = list(csv.DictReader(as_of.open()))
    assert [r["type"] for r in rows] == ["registered", "purchase", "call", "survey_response", "view"]
    assert [r["included"] for r in rows[:-1]] == ["False", "True", "False", "True"]
    view = json.loads(rows[-1]["data"])
    assert view == client.get(f"/customers/{key}", params={"as_of": "2025-06-01T12:00:00Z"}).json()
    assert view["interaction_counts"] == {"call": 0, "email": 0, "purchase": 1, "survey_response": 1}


def test_export_of_an_unknown_customer_says_so(settings: Settings, store: InteractionLog, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert export(settings, f"nobody-{uuid.uuid4().hex[:8]}", tmp_path / "x.jsonl") == 2
    assert "no customer" in capsys.readouterr().err
    assert export(settings, "anyone", tmp_path / "y.jsonl", as_of="last tuesday") == 2
    assert "as_of" in capsys.readouterr().err
