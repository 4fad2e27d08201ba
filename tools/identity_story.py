"""The demo's identity story (issue 14): one person reached by phone, then email, then buying with
an account, in messages keyed as the contract says (so they land in different partitions and
meet as one customer); and a household whose two accounts share an email (never merged)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tools.demo_data import DemoMessage

PERSON = {"id": "crm-story-ana", "email": "Ana.Story@Example.com", "phone": "+94 77 000 0001", "name": "Ana Story"}
HOUSEHOLD = ("crm-story-ravi", "crm-story-mala")
SHARED_EMAIL = "perera.family@example.com"


def identity_story(now: datetime) -> list[DemoMessage]:
    """The story's messages, in the order they are published."""
    def at(days: float) -> str:
        return (now - timedelta(days=days)).astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    p = PERSON
    events = [
        {"event_id": "story:call:1", "type": "call", "occurred_at": at(40), "source": "pbx-01",
         "customer": {"phone": p["phone"]}, "data": {"direction": "inbound", "duration_seconds": 420, "topic": "billing"}},
        {"event_id": "story:nps:1", "type": "survey_response", "occurred_at": at(39), "source": "survey-tool",
         "customer": {"phone": p["phone"]}, "data": {"kind": "nps", "score": 4, "about_event_id": "story:call:1"}},
        {"event_id": "story:email:1", "type": "email", "occurred_at": at(20), "source": "mail-gw",
         "customer": {"email": p["email"], "phone": p["phone"], "name": p["name"]},
         "data": {"direction": "inbound", "subject": "my bill"}},
        {"event_id": "story:order:1", "type": "purchase", "occurred_at": at(10), "source": "shop",
         "customer": {"id": p["id"], "email": p["email"].lower()},
         "data": {"order_id": "story-1", "amount": "49.90", "currency": "USD"}},
        {"event_id": "story:order:2", "type": "purchase", "occurred_at": at(30), "source": "shop",
         "customer": {"id": HOUSEHOLD[0], "email": SHARED_EMAIL}, "data": {"order_id": "story-2", "amount": "20.00",
                                                                           "currency": "USD"}},
        {"event_id": "story:order:3", "type": "purchase", "occurred_at": at(5), "source": "shop",
         "customer": {"id": HOUSEHOLD[1], "email": SHARED_EMAIL}, "data": {"order_id": "story-3", "amount": "35.00",
                                                                           "currency": "USD"}},
    ]
    return [DemoMessage(key_of(e["customer"]).encode(), json.dumps(e).encode(), "valid") for e in events]


def key_of(customer: dict[str, str]) -> str:
    """The contract's message key: the id, else the email, else the phone."""
    return customer.get("id") or customer.get("email") or customer["phone"]
