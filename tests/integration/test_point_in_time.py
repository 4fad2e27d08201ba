"""Point-in-time views (contract §5): `GET /customers/{id}`, `/lifecycle` and `/timeline` with
`as_of` (what was true then: events that occurred by then, evaluated then) and `known_at` (what we
knew then: events Rapport had recorded by then), against the real Kafka and PostgreSQL.

Expected values are worked out by hand here from the contract's words (§3, §4), never by calling
the code under test. The recorded time of a stored event is read back from the event store with
SQL, or set explicitly by storing the events through the store. At `T = now` both must equal the
live view, built by the projector into the read models.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from domain.contract import validate_envelope
from domain.customer import Customer, customer_id_for
from eventstore import tables
from eventstore.store import InteractionLog
from services.bootstrap import projector
from services.settings import Settings
from tests.support import deliver, envelope, iso, new_customer_id

pytestmark = pytest.mark.integration

TICK = timedelta(microseconds=1)  # the resolution of stored times
def email_of(c: str) -> str:
    return f"ana.{c}@example.com"  # each customer's own: a shared one would link them (issue 14)


def email(c: str, at: str, tag: str, **customer: str) -> dict[str, Any]:
    return envelope(c, "email", at, {"direction": "inbound", "subject": tag}, event_id=f"{c}:{tag}", email=email_of(c),
                    **customer)


def purchase(c: str, at: str, tag: str, amount: str, currency: str, sku: str, **customer: str) -> dict[str, Any]:
    return envelope(c, "purchase", at, {"order_id": f"o-{tag}", "amount": amount, "currency": currency,
                                        "items": [{"sku": sku, "quantity": 1, "unit_price": amount}]},
                    event_id=f"{c}:{tag}", **customer)


def nps(c: str, at: str, score: int, tag: str) -> dict[str, Any]:
    return envelope(c, "survey_response", at, {"kind": "nps", "score": score}, event_id=f"{c}:{tag}")


def get(client: TestClient, path: str, **query: str) -> dict[str, Any]:
    response = client.get(path, params=query)
    assert response.status_code == 200, (path, query, response.status_code, response.text)
    return response.json()


def recorded_times(store: InteractionLog, c: str) -> dict[str, datetime]:
    """event_id → the time the event store holds as its recorded time (the stored event's timestamp)."""
    with store.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(
            f"SELECT convert_from(state, 'UTF8')::jsonb->>'event_id' AS event_id, {tables.RECORDED_AT_SQL} AS at "
            f"FROM {tables.EVENTS} WHERE originator_id = %s", (customer_id_for(c),),
        ).fetchall()
    return {row["event_id"]: row["at"] for row in rows if row["event_id"] is not None}


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["event_id"] for item in items]


def stages(body: dict[str, Any]) -> list[tuple[str, str, str | None, str, str | None]]:
    """(stage, since, until, reason, event_id) of each item of a lifecycle answer."""
    return [(i["stage"], i["since"], i["until"], i["reason"], i["event_id"]) for i in body["items"]]


# --------------------------------------------------------------------------------------------
# A customer with a late event: a purchase that occurred early but was recorded last.


def early_story(c: str) -> list[dict[str, Any]]:
    return [
        email(c, "2020-01-10T09:00:00Z", "e1", name="Ana Early"),
        purchase(c, "2020-02-01T10:00:00Z", "p1", "10.00", "USD", "sku-1"),
        nps(c, "2020-03-01T12:00:00Z", 9, "n1"),
        purchase(c, "2020-04-01T12:00:00Z", "p2", "20.00", "USD", "sku-2", name="Ana Later"),
    ]


def late_purchase(c: str) -> dict[str, Any]:
    return purchase(c, "2020-01-20T08:00:00Z", "p0", "5.50", "EUR", "sku-0")


@pytest.fixture
def late_customer(settings: Settings, store: InteractionLog, client: TestClient) -> tuple[str, datetime, datetime]:
    """A customer whose events were recorded in two phases: the customer, the last recorded time of
    phase one (K1) and the recorded time of the late purchase (K2)."""
    c = new_customer_id()
    deliver(settings, store, early_story(c))
    known_first = max(recorded_times(store, c).values())
    deliver(settings, store, [late_purchase(c)])
    late_recorded = recorded_times(store, c)[f"{c}:p0"]
    assert known_first < late_recorded, "the late purchase was recorded after the first four events"
    return c, known_first, late_recorded


def test_as_of_shows_what_was_true_then_including_events_recorded_later(
        client: TestClient, late_customer: tuple[str, datetime, datetime]) -> None:
    c, _, _ = late_customer
    view = get(client, f"/customers/{c}", as_of="2020-01-31T00:00:00Z")
    assert view == {
        "customer_id": c,
        "name": "Ana Early",
        "emails": [email_of(c)],
        "phones": [],
        "first_seen_at": "2020-01-10T09:00:00Z",
        "last_seen_at": "2020-01-20T08:00:00Z",
        "interaction_counts": {"call": 0, "email": 1, "purchase": 1, "survey_response": 0},
        "last_contact_at": {"call": None, "email": "2020-01-10T09:00:00Z", "purchase": "2020-01-20T08:00:00Z",
                            "survey_response": None},
        "preferred_channel": "email",
        "purchases": {"count": 1, "revenue": {"EUR": "5.50"}, "average_order_value": {"EUR": "5.50"},
                      "last_purchase_at": "2020-01-20T08:00:00Z", "products": ["sku-0"]},
        "satisfaction": {"responses": 0, "last_nps_score": None, "nps_category": None, "average_nps_score": None,
                         "last_csat_score": None},
        "lifecycle": {"stage": "acquired", "since": "2020-01-20T08:00:00Z"},
        "identity": {"identifiers": [f"id:{c}", f"email:{email_of(c)}"], "refused_links": []},
        # Predictions and segments score the whole population at a refresh, not a fold of this customer's
        # events: a point-in-time view gives the revenue to date only (README, Customer value).
        "value": {"historical": {"EUR": "5.50"}, "p_alive": None, "expected_purchases_12m": None, "clv_12m": None,
                  "model_version": None},
        "segment": None,
    }
    # Three purchases by May (the late one too), NPS 9 after the second: advocate since the NPS.
    may = get(client, f"/customers/{c}", as_of="2020-05-01")
    assert may["purchases"]["count"] == 3
    assert may["purchases"]["revenue"] == {"EUR": "5.50", "USD": "30.00"}
    assert may["purchases"]["products"] == ["sku-0", "sku-1", "sku-2"]
    assert may["name"] == "Ana Later"
    assert may["lifecycle"] == {"stage": "advocate", "since": "2020-03-01T12:00:00Z"}


def test_as_of_before_a_purchase_shows_no_purchase(
        client: TestClient, late_customer: tuple[str, datetime, datetime]) -> None:
    c, _, _ = late_customer
    view = get(client, f"/customers/{c}", as_of="2020-01-15T00:00:00Z")
    assert view["interaction_counts"] == {"call": 0, "email": 1, "purchase": 0, "survey_response": 0}
    assert view["purchases"] == {"count": 0, "revenue": {}, "average_order_value": {}, "last_purchase_at": None,
                                 "products": []}
    assert view["lifecycle"] == {"stage": "reached", "since": "2020-01-10T09:00:00Z"}


def test_known_at_shows_what_was_recorded_then_evaluated_then(
        client: TestClient, late_customer: tuple[str, datetime, datetime]) -> None:
    c, known_first, late_recorded = late_customer
    view = get(client, f"/customers/{c}", known_at=iso(known_first))
    assert view["name"] == "Ana Later"
    assert (view["first_seen_at"], view["last_seen_at"]) == ("2020-01-10T09:00:00Z", "2020-04-01T12:00:00Z")
    assert view["interaction_counts"] == {"call": 0, "email": 1, "purchase": 2, "survey_response": 1}
    assert view["purchases"] == {"count": 2, "revenue": {"USD": "30.00"}, "average_order_value": {"USD": "15.00"},
                                 "last_purchase_at": "2020-04-01T12:00:00Z", "products": ["sku-1", "sku-2"]}
    assert view["satisfaction"] == {"responses": 1, "last_nps_score": 9, "nps_category": "promoter",
                                    "average_nps_score": 9.0, "last_csat_score": None}
    # Evaluated at K1 (this year): the last interaction, 2020-04-01T12:00Z, is more than 365 days back.
    assert view["lifecycle"] == {"stage": "churned", "since": "2021-04-01T12:00:00Z"}
    # The recorded time is inclusive: at the late purchase's own recorded time it is known, a tick before not.
    assert get(client, f"/customers/{c}", known_at=iso(late_recorded))["purchases"]["count"] == 3
    assert get(client, f"/customers/{c}", known_at=iso(late_recorded - TICK))["purchases"]["count"] == 2


def test_known_at_before_the_late_recording_lacks_it_where_as_of_after_it_occurred_has_it(
        client: TestClient, late_customer: tuple[str, datetime, datetime]) -> None:
    c, known_first, _ = late_customer
    as_of = get(client, f"/customers/{c}", as_of="2020-01-25T00:00:00Z")
    both = get(client, f"/customers/{c}", as_of="2020-01-25T00:00:00Z", known_at=iso(known_first))
    assert as_of["purchases"]["count"] == 1 and as_of["lifecycle"] == {"stage": "acquired",
                                                                      "since": "2020-01-20T08:00:00Z"}
    assert both["purchases"]["count"] == 0 and both["lifecycle"] == {"stage": "reached",
                                                                     "since": "2020-01-10T09:00:00Z"}
    # Both: what we knew at K1 about May 2020, evaluated in May: advocate since the 2nd purchase
    # we knew of (without the late one, the NPS 9 came with only one purchase).
    may = get(client, f"/customers/{c}", as_of="2020-05-01T00:00:00Z", known_at=iso(known_first))
    assert may["purchases"]["count"] == 2
    assert may["lifecycle"] == {"stage": "advocate", "since": "2020-04-01T12:00:00Z"}


def test_at_now_both_equal_the_live_view_of_the_read_models(
        client: TestClient, late_customer: tuple[str, datetime, datetime]) -> None:
    c, _, _ = late_customer
    live = client.get(f"/customers/{c}")  # the projector has caught up (deliver)
    assert live.status_code == 200
    now = iso(datetime.now(UTC))
    for query in ({"as_of": now}, {"known_at": now}, {"as_of": now, "known_at": now}):
        at_now = client.get(f"/customers/{c}", params=query)
        assert at_now.status_code == 200, at_now.text
        assert at_now.json() == live.json(), query
        assert at_now.content == live.content, query  # the very same JSON
    assert live.json()["purchases"]["count"] == 3


def test_lifecycle_at_a_point_in_time_is_the_history_up_to_it(
        client: TestClient, late_customer: tuple[str, datetime, datetime]) -> None:
    c, known_first, _ = late_customer
    body = get(client, f"/customers/{c}/lifecycle", as_of="2020-03-15T00:00:00Z")
    assert body["customer_id"] == c
    assert stages(body) == [
        ("reached", "2020-01-10T09:00:00Z", "2020-01-20T08:00:00Z", "first email", f"{c}:e1"),
        ("acquired", "2020-01-20T08:00:00Z", "2020-02-01T10:00:00Z", "1st purchase", f"{c}:p0"),
        ("retained", "2020-02-01T10:00:00Z", "2020-03-01T12:00:00Z", "2nd purchase", f"{c}:p1"),
        ("advocate", "2020-03-01T12:00:00Z", None, "NPS 9", f"{c}:n1"),
    ]
    # Without the late purchase, known at K1 and evaluated then: the passing of time adds at_risk
    # (180 days after the last purchase) and churned (365 days after the last interaction).
    assert stages(get(client, f"/customers/{c}/lifecycle", known_at=iso(known_first))) == [
        ("reached", "2020-01-10T09:00:00Z", "2020-02-01T10:00:00Z", "first email", f"{c}:e1"),
        ("acquired", "2020-02-01T10:00:00Z", "2020-04-01T12:00:00Z", "1st purchase", f"{c}:p1"),
        ("advocate", "2020-04-01T12:00:00Z", "2020-09-28T12:00:00Z", "2nd purchase", f"{c}:p2"),
        ("at_risk", "2020-09-28T12:00:00Z", "2021-04-01T12:00:00Z", "no purchase for 180 days", None),
        ("churned", "2021-04-01T12:00:00Z", None, "no interaction for 365 days", None),
    ]
    # At now, the same as the lifecycle read model's history.
    now = iso(datetime.now(UTC))
    live = get(client, f"/customers/{c}/lifecycle")
    assert get(client, f"/customers/{c}/lifecycle", as_of=now) == live
    assert get(client, f"/customers/{c}/lifecycle", known_at=now) == live


def test_timeline_at_a_point_in_time_lists_only_the_events_it_admits(
        client: TestClient, late_customer: tuple[str, datetime, datetime]) -> None:
    c, known_first, _ = late_customer
    live = {item["event_id"]: item for item in get(client, f"/customers/{c}/timeline")["items"]}

    def timeline(**query: str) -> list[dict[str, Any]]:
        body = get(client, f"/customers/{c}/timeline", **query)
        assert body["next_cursor"] is None
        return body["items"]

    as_of = timeline(as_of="2020-01-31T00:00:00Z")
    assert ids(as_of) == [f"{c}:p0", f"{c}:e1"]
    assert as_of == [live[e] for e in ids(as_of)], "the same items as the timeline read model's"
    assert ids(timeline(known_at=iso(known_first))) == [f"{c}:{t}" for t in ("p2", "n1", "p1", "e1")]
    assert ids(timeline(as_of="2020-02-15T00:00:00Z", known_at=iso(known_first))) == [f"{c}:p1", f"{c}:e1"]
    now = iso(datetime.now(UTC))
    assert get(client, f"/customers/{c}/timeline", as_of=now) == get(client, f"/customers/{c}/timeline")


def test_timeline_at_a_point_in_time_pages_with_the_same_cursors(
        client: TestClient, late_customer: tuple[str, datetime, datetime]) -> None:
    c, _, _ = late_customer
    pages, cursor = [], None
    while True:
        body = get(client, f"/customers/{c}/timeline", as_of="2020-03-15T00:00:00Z", limit="2",
                   **({"cursor": cursor} if cursor else {}))
        pages.append(ids(body["items"]))
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [[f"{c}:n1", f"{c}:p1"], [f"{c}:p0", f"{c}:e1"]]


@pytest.mark.parametrize("query", [
    {"as_of": "2020-01-10T08:59:59Z"},                       # a second before the first event
    {"known_at": "2001-01-01"},                              # before anything was recorded
    {"as_of": "2020-03-01T00:00:00Z", "known_at": "2001-01-01"},
])
def test_before_the_first_event_the_customer_is_unknown_404(
        client: TestClient, late_customer: tuple[str, datetime, datetime], query: dict[str, str]) -> None:
    c, _, _ = late_customer
    for tail in ("", "/lifecycle", "/timeline"):
        response = client.get(f"/customers/{c}{tail}", params=query)
        assert response.status_code == 404, (tail, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and c in detail, detail
        assert all(name in detail for name in query), detail
    assert client.get(f"/customers/{c}", params={"as_of": "2020-01-10T09:00:00Z"}).status_code == 200


@pytest.mark.parametrize("tail", ["", "/lifecycle", "/timeline"])
@pytest.mark.parametrize(("query", "parameter"), [
    ({"as_of": "yesterday"}, "as_of"),
    ({"as_of": "2020-01-01T00:00:00"}, "as_of"),             # no UTC offset
    ({"known_at": "2020-13-01"}, "known_at"),
    ({"as_of": "2020-01-01T00:00:00Z", "known_at": ""}, "known_at"),
])
def test_a_bad_time_is_422_naming_the_parameter(client: TestClient, tail: str, query: dict[str, str],
                                                parameter: str) -> None:
    response = client.get(f"/customers/{new_customer_id()}{tail}", params=query)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.startswith(f"{parameter}:"), detail


# --------------------------------------------------------------------------------------------
# Recorded times set explicitly: events stored through the event store with chosen timestamps.


def store_with_recorded_times(store: InteractionLog, c: str, recorded: list[tuple[dict[str, Any], datetime]]) -> None:
    customer = Customer(c)
    for message, _ in recorded:
        customer.record(validate_envelope(message))
    registered, *interactions = customer.collect_events()
    store.events.put([registered, *(dataclasses.replace(event, timestamp=at)  # type: ignore[type-var]
                                    for event, (_, at) in zip(interactions, recorded, strict=True))])


def test_known_at_is_evaluated_at_known_at_and_both_at_as_of(
        settings: Settings, store: InteractionLog, client: TestClient) -> None:
    c = new_customer_id()
    store_with_recorded_times(store, c, [
        (purchase(c, "2002-01-01T00:00:00Z", "p", "7.00", "USD", "sku-7"), datetime(2002, 1, 2, tzinfo=UTC)),
        # occurred in June 2002, recorded more than a year later
        (email(c, "2002-06-01T00:00:00Z", "e"), datetime(2003, 8, 1, tzinfo=UTC)),
    ])
    projector(settings, store).catch_up()

    def lifecycle(**query: str) -> dict[str, Any]:
        return get(client, f"/customers/{c}", **query)["lifecycle"]

    # Known on 2003-01-01: the purchase alone, exactly 365 days before: at_risk since 180 days
    # after it (2002-06-30), and churned only once more than 365 days have passed.
    assert lifecycle(known_at="2003-01-01T00:00:00Z") == {"stage": "at_risk", "since": "2002-06-30T00:00:00Z"}
    assert lifecycle(known_at="2003-01-01T00:00:00.000001Z") == {"stage": "churned", "since": "2003-01-01T00:00:00Z"}
    # As of that day, knowing now what happened in June: the email keeps the customer from churning.
    assert lifecycle(as_of="2003-01-02T00:00:00Z") == {"stage": "at_risk", "since": "2002-06-30T00:00:00Z"}
    assert lifecycle(known_at="2003-01-02T00:00:00Z") == {"stage": "churned", "since": "2003-01-01T00:00:00Z"}
    # Both: what was known on 2003-01-01 about 2004-01-01, evaluated then.
    assert lifecycle(as_of="2004-01-01T00:00:00Z", known_at="2003-01-01T00:00:00Z") == {
        "stage": "churned", "since": "2003-01-01T00:00:00Z"}
    assert get(client, f"/customers/{c}", known_at="2003-01-01")["interaction_counts"]["email"] == 0
    assert get(client, f"/customers/{c}", known_at="2003-08-01")["interaction_counts"]["email"] == 1

    assert stages(get(client, f"/customers/{c}/lifecycle", as_of="2003-07-01T00:00:00Z")) == [
        ("acquired", "2002-01-01T00:00:00Z", "2002-06-30T00:00:00Z", "1st purchase", f"{c}:p"),
        ("at_risk", "2002-06-30T00:00:00Z", "2003-06-01T00:00:00Z", "no purchase for 180 days", None),
        ("churned", "2003-06-01T00:00:00Z", None, "no interaction for 365 days", None),
    ]
    assert ids(get(client, f"/customers/{c}/timeline", known_at="2003-01-01")["items"]) == [f"{c}:p"]
    assert ids(get(client, f"/customers/{c}/timeline", as_of="2003-01-01")["items"]) == [f"{c}:e", f"{c}:p"]

    live = client.get(f"/customers/{c}")
    now = iso(datetime.now(UTC))
    assert client.get(f"/customers/{c}", params={"known_at": now}).content == live.content
    assert client.get(f"/customers/{c}", params={"as_of": now}).content == live.content
