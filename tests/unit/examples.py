"""Valid example contents of the four event types (contract §1), shared by unit tests."""

from __future__ import annotations

import copy
from typing import Any

CUSTOMER = {"id": "crm-42", "email": "ana@example.com", "phone": "+94771234567", "name": "Ana Perera"}
DATA: dict[str, dict[str, Any]] = {
    "call": {"direction": "inbound", "duration_seconds": 310, "outcome": "resolved", "agent": "kasun"},
    "email": {"direction": "outbound", "subject": "Welcome", "campaign": "spring-2026"},
    "purchase": {
        "order_id": "ord-1001",
        "amount": "120.00",
        "currency": "USD",
        "items": [{"sku": "sku-1", "quantity": 2, "unit_price": "60.00"}],
        "channel": "web",
    },
    "survey_response": {
        "kind": "nps",
        "score": 9,
        "survey_id": "srv-7",
        "comment": "great help",
        "about_event_id": "pbx-01:call:998877",
    },
}


def example(type_: str = "call") -> dict[str, Any]:
    """A fresh valid envelope of `type_`: the contract's example."""
    return {
        "event_id": f"pbx-01:{type_}:998877",
        "type": type_,
        "occurred_at": "2026-03-01T10:15:00+05:30",
        "customer": dict(CUSTOMER),
        "source": "pbx-01",
        "version": 1,
        "data": copy.deepcopy(DATA[type_]),
    }
