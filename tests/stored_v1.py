"""Rows of the event store exactly as Rapport wrote them before call data version 2 (commit e115980).

Made by that commit's own code: the four messages of `MESSAGES` published to Kafka, consumed by
`rapport ingest`, and the rows read back from `rapport_events` and `rapport_event_ids` byte for
byte. Never regenerate them with newer code: they stand for events stored years ago, and the
tests reading them check that such events still load (upcast) and are still recognised.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

CUSTOMER_KEY = "crm-schema-v1"
CUSTOMER_ID = UUID("cab67531-4195-5f68-86d0-a72255e0e06d")  # customer_id_for(CUSTOMER_KEY)

_REF = {"id": CUSTOMER_KEY, "email": "ines@example.com", "name": "Inés Old"}

# The messages as the producers sent them.
MESSAGES: list[dict[str, Any]] = [
    {"event_id": "pbx-01:call:1001", "type": "call", "occurred_at": "2025-01-10T10:15:00+05:30", "customer": _REF,
     "source": "pbx-01",
     "data": {"direction": "inbound", "duration_seconds": 310, "outcome": "resolved", "agent": "kasun",
              "queue": "billing"}},
    {"event_id": "shop:order:2001", "type": "purchase", "occurred_at": "2025-02-01T12:00:00Z", "customer": _REF,
     "source": "pbx-01",
     "data": {"order_id": "o-2001", "amount": "120.00", "currency": "USD",
              "items": [{"sku": "sku-1", "quantity": 2, "unit_price": "60.00"}]}},
    {"event_id": "srv:nps:3001", "type": "survey_response", "occurred_at": "2025-02-03T09:00:00Z", "customer": _REF,
     "source": "pbx-01", "data": {"kind": "nps", "score": 9, "about_event_id": "pbx-01:call:1001"}},
    # Accepted then: any `version` was taken, and this one's data is version 1's.
    {"event_id": "pbx-01:call:1002", "type": "call", "occurred_at": "2025-03-05T08:00:00Z", "customer": _REF,
     "source": "pbx-01", "data": {"direction": "outbound", "duration_seconds": 0, "outcome": "no_answer"},
     "version": 2},
]

# (originator_id, originator_version, topic, state) of each row of rapport_events, in notification order.
EVENTS: list[tuple[UUID, int, str, bytes]] = [
    (CUSTOMER_ID, 1, "domain.customer:Customer.Registered",
     b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-25T18:33:07.281777+00:00"},'
     b'"originator_topic":"domain.customer:Customer","customer_key":"crm-schema-v1"}'),
    (CUSTOMER_ID, 2, "domain.customer:Customer.CallLogged",
     b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-25T18:33:07.281899+00:00"},"event_id":"pbx-01:call:1001",'
     b'"occurred_at":{"_type_":"datetime_iso","_data_":"2025-01-10T04:45:00+00:00"},"source":"pbx-01","schema_version":1,'
     b'"customer":{"id":"crm-schema-v1","email":"ines@example.com","name":"In\xc3\xa9s Old"},'
     b'"data":{"direction":"inbound","duration_seconds":310,"outcome":"resolved","agent":"kasun","queue":"billing"},'
     b'"extra":{}}'),
    (CUSTOMER_ID, 3, "domain.customer:Customer.PurchaseRecorded",
     b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-25T18:33:07.281927+00:00"},"event_id":"shop:order:2001",'
     b'"occurred_at":{"_type_":"datetime_iso","_data_":"2025-02-01T12:00:00+00:00"},"source":"pbx-01","schema_version":1,'
     b'"customer":{"id":"crm-schema-v1","email":"ines@example.com","name":"In\xc3\xa9s Old"},'
     b'"data":{"order_id":"o-2001","amount":"120.00","currency":"USD",'
     b'"items":[{"sku":"sku-1","quantity":2,"unit_price":"60.00"}]},"extra":{}}'),
    (CUSTOMER_ID, 4, "domain.customer:Customer.SurveyAnswered",
     b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-25T18:33:07.281943+00:00"},"event_id":"srv:nps:3001",'
     b'"occurred_at":{"_type_":"datetime_iso","_data_":"2025-02-03T09:00:00+00:00"},"source":"pbx-01","schema_version":1,'
     b'"customer":{"id":"crm-schema-v1","email":"ines@example.com","name":"In\xc3\xa9s Old"},'
     b'"data":{"kind":"nps","score":9,"about_event_id":"pbx-01:call:1001"},"extra":{}}'),
    (CUSTOMER_ID, 5, "domain.customer:Customer.CallLogged",
     b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-25T18:33:07.281955+00:00"},"event_id":"pbx-01:call:1002",'
     b'"occurred_at":{"_type_":"datetime_iso","_data_":"2025-03-05T08:00:00+00:00"},"source":"pbx-01","schema_version":2,'
     b'"customer":{"id":"crm-schema-v1","email":"ines@example.com","name":"In\xc3\xa9s Old"},'
     b'"data":{"direction":"outbound","duration_seconds":0,"outcome":"no_answer"},"extra":{}}'),
]

# (event_id, fingerprint, source_partition, source_offset) of each row of rapport_event_ids.
EVENT_IDS: list[tuple[str, str, int, int]] = [
    ("pbx-01:call:1001", "ab8230051319830d69ad40178cbf09d84c9e55d97ef425696276e59ecde55374", 1, 0),
    ("pbx-01:call:1002", "487132382cedac75331dde64481e9ed4ed497e8a84c99de5148f7e68cd99fd9b", 1, 3),
    ("shop:order:2001", "e04a7033cb3adb6746d4b31ad78de551dfe416fe36f128c2d4a183c3b2212729", 1, 1),
    ("srv:nps:3001", "baef1d0fdc9e8bebea02b332b7a12c6ae861e5691bd9b74ef146c5c6318c87cc", 1, 2),
]
