"""Which parts of an interaction are the customer's personal data (issue 15, erasure).

The event store keeps these parts encrypted under a key of the customer's own (`eventstore.sealing`);
forgetting the customer destroys the key. Everything else stays readable for ever: counts, times,
amounts, scores, lifecycle and the hash chains need nothing personal.

Personal: the customer's `name`, `email`, `phone` and any unknown field of `customer` (the account
`id` is the business's own key for the customer, not personal data in itself); in `data`, the free
text a person wrote (`subject` of an email, `comment` of a survey answer) and every field the
contract does not name (it cannot say what they hold); every unknown top-level field (`extra`).
"""

from __future__ import annotations

from typing import Any

# Fields of `data` known to hold no personal data, by event type (contract §1; calls' v2 included).
NOT_PERSONAL_DATA: dict[str, frozenset[str]] = {
    "call": frozenset({"direction", "duration_seconds", "duration_ms", "outcome", "agent", "topic"}),
    "email": frozenset({"direction", "campaign"}),
    "purchase": frozenset({"order_id", "amount", "currency", "items", "channel"}),
    "survey_response": frozenset({"kind", "score", "survey_id", "about_event_id"}),
}
NOT_PERSONAL_CUSTOMER = frozenset({"id"})
PERSONAL_CUSTOMER_FIELDS = ("name", "email", "phone")  # and any unknown field of `customer`
FORGOTTEN = "[forgotten]"  # what a read model shows in place of a forgotten name


def split(event_type: str, customer: dict[str, Any], data: dict[str, Any], extra: dict[str, Any]
          ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(customer, data) without their personal fields, and the personal fields (None if there are none):
    `{"customer": {...}, "data": {...}, "extra": {...}}`, each part only when not empty."""
    known = NOT_PERSONAL_DATA[event_type]
    clear_customer = {k: v for k, v in customer.items() if k in NOT_PERSONAL_CUSTOMER}
    clear_data = {k: v for k, v in data.items() if k in known}
    personal: dict[str, Any] = {}
    if len(clear_customer) < len(customer):
        personal["customer"] = {k: v for k, v in customer.items() if k not in NOT_PERSONAL_CUSTOMER}
    if len(clear_data) < len(data):
        personal["data"] = {k: v for k, v in data.items() if k not in known}
    if extra:
        personal["extra"] = extra
    return clear_customer, clear_data, personal or None


def join(customer: dict[str, Any], data: dict[str, Any], personal: dict[str, Any] | None
         ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The (customer, data, extra) `split` was given, from its parts; with `personal` None (forgotten),
    the clear parts alone."""
    if not personal:
        return customer, data, {}
    return {**customer, **personal.get("customer", {})}, {**data, **personal.get("data", {})}, personal.get("extra", {})
