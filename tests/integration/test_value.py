"""Customer value and segments (issue 16; contract §6) through the real Kafka, ingest, projector and API.

The acceptance test publishes the CDNOW sample that ships inside `lifetimes` through Kafka and fits
the model with calibration end 1997-09-30: the parameters must be within 1% of those Fader, Hardie
& Lee published. Segment tests run on a database of their own (segments rank every customer), with
customers whose RFM scores follow from the contract's words by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from services import cdnow, value
from services.bootstrap import conninfo, interaction_log
from services.http.app import create_app
from services.settings import Settings
from tests.conftest import settings_env
from tests.support import api_key, auth, deliver, envelope, iso, own_database, parse

pytestmark = pytest.mark.integration


@pytest.fixture
def own(settings: Settings) -> Iterator[tuple[Settings, Any, TestClient]]:
    """A database of this test alone, its event store, and the API on it with an analyst's key."""
    with own_database(settings, "rapport_value") as mine:
        store = interaction_log(mine)
        try:
            with TestClient(create_app(mine)) as client:
                client.headers.update(auth(api_key(mine, "analyst")))
                yield mine, store, client
        finally:
            store.close()


def within(found: float, published: float, share: float = 0.01) -> bool:
    return abs(found - published) <= share * abs(published)


def test_cdnow_through_kafka_fits_the_published_parameters(own: tuple[Settings, Any, TestClient]) -> None:
    settings, store, client = own
    assert client.get("/value/model").status_code == 404
    # Beside the sample: a purchase of a sample customer from another system, and one in another currency.
    other = [envelope("cdnow-00004", "purchase", "1997-05-05T10:00:00Z", {"order_id": "o-1", "amount": "500.00",
                                                                          "currency": "USD"}),
             {**envelope("cdnow-00004", "purchase", "1997-06-06T10:00:00Z", {"order_id": "o-2", "amount": "70.00",
                                                                           "currency": "EUR"}), "source": "cdnow"}]
    deliver(settings, store, list(cdnow.envelopes()) + other)

    response = client.post("/value/model/fit", json={"calibration_end": cdnow.CALIBRATION_END, "currency": "USD",
                                                     "source": cdnow.SOURCE})
    assert response.status_code == 201, response.text
    model = response.json()
    found = {**model["bgnbd"], **model["gamma_gamma"]}
    off = {name: (found[name], published) for name, published in cdnow.PUBLISHED.items()
           if not within(found[name], published)}
    assert off == {}, f"more than 1% from Fader, Hardie & Lee: {off}"
    # Every customer of the sample first bought in 1997's first quarter, before the calibration end.
    assert model["customers"] == cdnow.CUSTOMERS
    with psycopg.connect(conninfo(settings)) as conn:
        days = conn.execute("SELECT count(DISTINCT (customer_id, (occurred_at AT TIME ZONE 'UTC')::date)) "
                            "FROM value_purchases WHERE occurred_at <= '1997-09-30T00:00:00Z' AND source = 'cdnow' "
                            "AND currency = 'USD'").fetchone()
    assert days is not None and model["purchases"] == days[0]
    assert model["calibration_end"] == "1997-09-30T00:00:00Z" and model["source"] == "cdnow"
    assert client.get("/value/model").json() == model

    # The view of a customer carries the model's predictions, now (decades after their last purchase).
    view = client.get("/customers/cdnow-00004").json()
    value = view["value"]
    assert value["model_version"] == model["version"]
    assert value["historical"] == view["purchases"]["revenue"] == {"EUR": "70.00", "USD": "600.50"}
    assert 0 <= value["p_alive"] <= 1 and value["expected_purchases_12m"] >= 0
    assert set(value["clv_12m"]) == {"USD"} and float(value["clv_12m"]["USD"]) >= 0
    # Segments rank customers among themselves: the view's is the one the live query gives now.
    members = client.get(f"/segments/{view['segment']}/customers", params={"limit": 500}).json()["items"]
    assert "cdnow-00004" in [m["customer_id"] for m in members]

    cohorts = client.get("/value/cohorts").json()
    assert cohorts["model_version"] == model["version"]
    assert [c["cohort"] for c in cohorts["cohorts"]] == ["1997-01", "1997-02", "1997-03"]
    assert sum(c["customers"] for c in cohorts["cohorts"]) == cdnow.CUSTOMERS
    total = sum(float(t["amount"]) for t in ({"amount": e["data"]["amount"]} for e in cdnow.envelopes()))
    assert abs(sum(float(c["historical"]) for c in cohorts["cohorts"]) - total) < 0.01  # source cdnow, USD only
    distribution = client.get("/value/distribution", params={"buckets": 5}).json()
    assert len(distribution["buckets"]) == 5 and distribution["buckets"][-1]["to"] is None
    assert sum(b["customers"] for b in distribution["buckets"]) == cdnow.CUSTOMERS

    # The same from the shell: a new version with the same parameters; `model` prints it.
    env = settings_env(settings)
    fitted = subprocess.run([sys.executable, "-m", "services.cli", "value", "fit", "--calibration-end", "1997-09-30",
                             "--source", "cdnow", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert fitted.returncode == 0, fitted.stderr
    again = json.loads(fitted.stdout)
    assert again["version"] == model["version"] + 1
    assert again["bgnbd"] == pytest.approx(model["bgnbd"], rel=1e-6)
    assert again["gamma_gamma"] == pytest.approx(model["gamma_gamma"], rel=1e-6)
    shown = subprocess.run([sys.executable, "-m", "services.cli", "value", "model"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert json.loads(shown.stdout) == again
    refused = subprocess.run([sys.executable, "-m", "services.cli", "value", "fit", "--calibration-end", "1990-01-01"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "no purchase in USD by 1990-01-01" in refused.stdout
    # Without a source, the other system's purchase counts too: one more purchase day.
    response = client.post("/value/model/fit", json={"calibration_end": cdnow.CALIBRATION_END})
    assert response.status_code == 201, response.text
    every = response.json()
    assert every["source"] is None and every["purchases"] == model["purchases"] + 1


def test_a_fit_names_what_is_wrong(own: tuple[Settings, Any, TestClient]) -> None:
    settings, store, client = own
    future = iso(datetime.now(UTC) + timedelta(days=2))
    for body, words in [
        ({"calibration_end": future}, "in the future"),
        ({"calibration_end": "2020-01-01", "currency": "EUR"}, "no purchase in EUR"),
        ({"calibration_end": "2020-01-01", "currency": "usd"}, "currency"),
        ({"calibration_end": "yesterday"}, "calibration_end"),
        ({"currency": "USD"}, "calibration_end"),
    ]:
        response = client.post("/value/model/fit", json=body)
        assert response.status_code == 422, (body, response.text)
        assert words in response.text, (body, response.text)
    deliver(settings, store, purchases("few", [1, 2, 3], today=datetime(2020, 1, 1, tzinfo=UTC)))
    response = client.post("/value/model/fit", json={"calibration_end": "2020-01-01"})
    assert response.status_code == 422 and "too few purchases" in response.json()["detail"]


def purchases(customer_id: str, days_ago: list[int], today: datetime, amount: str = "10.00") -> list[dict[str, Any]]:
    return [envelope(customer_id, "purchase", iso(today - timedelta(days=d)),
                     {"order_id": f"{customer_id}-{d}", "amount": amount, "currency": "USD"}) for d in days_ago]


# Five customers, each alone at one rank of recency and of frequency: scores are their ranks (R 5 is
# the most recent, F 5 the most purchase days), and the segments follow from the README's R×F map.
CUSTOMERS = {
    "c1": ([1, 30, 60, 90, 120], 5, 5, "champions"),
    "c2": ([10, 40, 70, 100], 4, 4, "loyal"),
    "c3": ([20], 3, 1, "hibernating"),
    "c5": ([300, 330], 2, 2, "hibernating"),
    "c4": ([400, 430, 460], 1, 3, "at_risk"),
}


def test_segments_rank_every_customer_as_of_a_moment(own: tuple[Settings, Any, TestClient]) -> None:
    settings, store, client = own
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    messages = [m for c, (days, *_) in CUSTOMERS.items() for m in purchases(c, days, today)]
    messages.append(envelope("no-purchase", "call", iso(today), {"direction": "inbound", "duration_seconds": 5}))
    deliver(settings, store, messages)

    answer = client.get("/segments").json()
    counts = {s["name"]: s["customers"] for s in answer["segments"]}
    assert [s["name"] for s in answer["segments"]] == ["champions", "loyal", "potential_loyalists", "new", "at_risk",
                                                       "cant_lose", "hibernating", "lost"]
    assert counts == {"champions": 1, "loyal": 1, "potential_loyalists": 0, "new": 0, "at_risk": 1, "cant_lose": 0,
                      "hibernating": 2, "lost": 0}
    revenue = {s["name"]: s["revenue"] for s in answer["segments"]}
    assert revenue["champions"] == {"USD": "50.00"} and revenue["hibernating"] == {"USD": "30.00"}

    members = client.get("/segments/hibernating/customers", params={"limit": 1}).json()
    assert [m["customer_id"] for m in members["items"]] == ["c3"]
    assert members["items"][0] == {
        "customer_id": "c3", "recency_days": 20, "frequency": 1, "monetary": {"USD": "10.00"}, "r": 3, "f": 1,
        "m": 1, "last_purchase_at": iso(today - timedelta(days=20))}
    rest = client.get("/segments/hibernating/customers", params={"limit": 1, "cursor": members["next_cursor"]}).json()
    assert [m["customer_id"] for m in rest["items"]] == ["c5"] and rest["next_cursor"] is None

    # 95 days ago c3 had not bought yet: four customers, ranked among themselves.
    past = client.get("/segments", params={"as_of": iso(today - timedelta(days=95))}).json()
    assert sum(s["customers"] for s in past["segments"]) == 4

    # The 360 view: the segment after a refresh; no model yet, so no predictions.
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        value.refresh(conn, "USD", 0.1, datetime.now(UTC))
    for customer_id, (*_, segment) in CUSTOMERS.items():
        view = client.get(f"/customers/{customer_id}").json()
        assert view["segment"] == segment, customer_id
        assert view["value"] == {"historical": view["purchases"]["revenue"], "p_alive": None,
                                 "expected_purchases_12m": None, "clv_12m": None, "model_version": None}
    assert client.get("/customers/no-purchase").json()["segment"] is None
    # Without as_of, the segments are the refresh's (the view's), and as_of says when that was.
    scored = client.get("/segments").json()
    assert scored["segments"] == answer["segments"] and scored["as_of"] != answer["as_of"]
    assert parse(scored["as_of"]) > parse(answer["as_of"])
    members_now = client.get("/segments/hibernating/customers").json()
    assert [m["customer_id"] for m in members_now["items"]] == ["c3", "c5"]
    assert members_now["items"][0] == members["items"][0] | {"last_purchase_at": members_now["items"][0]["last_purchase_at"]}
    assert members_now["items"][0]["last_purchase_at"] == members["items"][0]["last_purchase_at"]
    # Paging across a refresh would mix two rankings: the API says so instead.
    first = client.get("/segments/hibernating/customers", params={"limit": 1}).json()
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        value.refresh(conn, "USD", 0.1, datetime.now(UTC))
    moved = client.get("/segments/hibernating/customers", params={"limit": 1, "cursor": first["next_cursor"]})
    assert moved.status_code == 409 and "start again" in moved.json()["detail"]
    surrogate = client.get("/segments/hibernating/customers", params={"cursor": "WyJcdWQ4MDAiLCAiMjAyNi0wMS0wMSJd"})
    assert surrogate.status_code == 422 and "surrogate" in surrogate.json()["detail"]


def test_customers_buying_once_share_the_lowest_frequency_score(own: tuple[Settings, Any, TestClient]) -> None:
    """Ties share a score: five of seven customers bought on one day only, and all get F 1 (a ranking
    that split ties would spread them over F 1 to F 4)."""
    settings, store, client = own
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    days = {"t1": [5], "t2": [15], "t3": [25], "t4": [35], "t5": [45], "t6": [50, 60], "t7": [55, 65, 75]}
    deliver(settings, store, [m for c, d in days.items() for m in purchases(c, d, today)])
    found = {m["customer_id"]: (m["r"], m["f"]) for name in ("new", "potential_loyalists", "hibernating", "lost",
                                                              "loyal", "champions", "at_risk", "cant_lose")
             for m in client.get(f"/segments/{name}/customers", params={"as_of": iso(today)}).json()["items"]}
    assert {c: f for c, (_, f) in found.items()} == {"t1": 1, "t2": 1, "t3": 1, "t4": 1, "t5": 1, "t6": 4, "t7": 5}
    # Recency: all distinct, so the scores are 1 + ⌊5 × (rank − 1) / 7⌋ from the least recent (t7, t6, t5, ...).
    assert {c: r for c, (r, _) in found.items()} == {"t7": 1, "t6": 1, "t5": 2, "t4": 3, "t3": 3, "t2": 4, "t1": 5}
    assert client.get("/segments/champs/customers").status_code == 404
    assert "champions" in client.get("/segments/champs/customers").json()["detail"]
    assert client.get("/segments", params={"as_of": "soon"}).status_code == 422
