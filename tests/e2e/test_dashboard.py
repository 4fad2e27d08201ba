"""The analysts' dashboard (issue 16 §4) in a real headless Chromium (Debian's, through its
chromedriver): events go through Kafka to `rapport run`, the page is opened with an analyst key in
the URL fragment, and every figure it shows is compared with the API's JSON, fetched here with the
same key and the same parameters. The page must load without a console error or a failed request
and drop the key from the address bar; a wrong key must show the API's 401 reason. A full-page
screenshot is kept in tests/artifacts/dashboard.png.

Runs on a database of its own: the figures are those of this test's events alone, and fitting a
value model here changes nothing for other tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.http import dashboard
from services.settings import Settings
from tests.conftest import settings_env
from tests.support import api_key, envelope, iso, new_customer_id, own_database, publish, serving, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHANNELS = ("all", "phone", "email", "purchase", "unknown")
STAGES = ("reached", "acquired", "retained", "advocate", "at_risk", "churned")
WRONG_KEY = "rk_AAAAAAAAAAAA_" + "A" * 43
CDNOW_CUSTOMERS = 150  # the fewest of the sample's first customers on which BG/NBD converges with some margin


# ---- the API and its data ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(base: str, path: str, key: str | None, **query: str | None) -> tuple[int, Any]:
    given = {k: v for k, v in query.items() if v is not None}
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(given)}" if given else "")
    return call("GET", url, key)


def call(method: str, url: str, key: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - localhost
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ok(base: str, path: str, key: str, **query: str | None) -> Any:
    status, body = get(base, path, key, **query)
    assert status == 200, (path, query, status, body)
    return body


def events(now: datetime) -> list[dict[str, Any]]:
    """Six customers with calls, emails, purchases and NPS/CSAT answers about each channel, two of
    them alarms in the last days, dated in the last months so that every panel has something to
    show; and customers of the CDNOW sample for the value model."""
    made: list[dict[str, Any]] = []

    def add(customer: str, kind: str, days: float, data: dict[str, Any], tag: str, name: str) -> str:
        event_id = f"{customer}:{tag}"
        made.append(envelope(customer, kind, iso(now - timedelta(days=days)), data, event_id=event_id, name=name))
        return event_id

    def inbound_call(c: str, days: float, tag: str, name: str) -> str:
        return add(c, "call", days, {"direction": "inbound", "duration_seconds": 120, "outcome": "resolved"}, tag, name)

    def email(c: str, days: float, tag: str, name: str) -> str:
        return add(c, "email", days, {"direction": "inbound", "subject": "hello"}, tag, name)

    def purchase(c: str, days: float, tag: str, amount: str, name: str) -> str:
        return add(c, "purchase", days, {"order_id": f"o-{tag}", "amount": amount, "currency": "USD"}, tag, name)

    def answer(c: str, days: float, tag: str, kind: str, score: int, name: str, about: str | None = None) -> None:
        add(c, "survey_response", days, {"kind": kind, "score": score, **({"about_event_id": about} if about else {})},
            tag, name)

    ana, ben, chi, dev, eli, fay = (new_customer_id() for _ in range(6))
    bought = purchase(ana, 150, "p1", "120.10", "Ana Perera")
    purchase(ana, 90, "p2", "80.00", "Ana Perera")
    later = purchase(ana, 40, "p3", "99.90", "Ana Perera")
    answer(ana, 88, "n1", "nps", 9, "Ana Perera", bought)
    answer(ana, 38, "n2", "nps", 10, "Ana Perera", later)
    mail = email(ben, 70, "e1", "Ben Silva")
    purchase(ben, 65, "p1", "35.50", "Ben Silva")
    answer(ben, 60, "n1", "nps", 8, "Ben Silva", mail)
    answer(ben, 59, "c1", "csat", 4, "Ben Silva", mail)
    rang = inbound_call(chi, 20, "call1", "Chi <b>Nguyen</b>")  # a name with markup: shown as text
    purchase(chi, 120, "p1", "250.00", "Chi <b>Nguyen</b>")
    purchase(chi, 30, "p2", "10.05", "Chi <b>Nguyen</b>")
    answer(chi, 3, "n1", "nps", 3, "Chi <b>Nguyen</b>", rang)
    rang = inbound_call(dev, 12, "call1", "Dev Rao")
    answer(dev, 11, "c1", "csat", 2, "Dev Rao", rang)
    answer(dev, 1, "c2", "csat", 1, "Dev Rao", rang)
    mail = email(eli, 25, "e1", "Eli Cohen")
    answer(eli, 24, "c1", "csat", 5, "Eli Cohen", mail)
    answer(eli, 22, "n1", "nps", 9, "Eli Cohen")  # about nothing: channel unknown
    for n, days in enumerate((200, 170, 140, 100, 45, 15)):
        bought = purchase(fay, days, f"p{n}", f"{20 + 7 * n}.25", "Fay Okafor")
    answer(fay, 14, "c1", "csat", 3, "Fay Okafor", bought)
    answer(fay, 13, "n1", "nps", 6, "Fay Okafor", bought)
    inbound_call(fay, 5, "call1", "Fay Okafor")
    return made + cdnow_sample()


def cdnow_sample() -> list[dict[str, Any]]:
    """The purchases of the first customers of the CDNOW sample (1997–1998), when this Rapport values
    customers: a value model fits them (a handful of made-up buyers would not converge)."""
    try:
        from services import cdnow
    except ImportError:
        return []
    customers: set[str] = set()
    taken = []
    for message in cdnow.envelopes():
        customer = message["customer"]["id"]
        if customer in customers or len(customers) < CDNOW_CUSTOMERS:
            customers.add(customer)
            taken.append(message)
    return taken


@dataclass(frozen=True)
class Running:
    base: str
    analyst: str


@pytest.fixture
def running(settings: Settings) -> Iterator[Running]:
    """`rapport run` on a database of this test's own, with this test's events ingested and projected."""
    with own_database(settings, "rapport_test_dashboard") as own:
        own = own.model_copy(update={"api_port": free_port()})
        analyst = api_key(own, "analyst", name="dashboard e2e")
        sent = events(datetime.now(UTC))
        with serving("run", settings_env(own), own.api_port) as base:
            publish(own, sent)
            customers = {e["customer"]["id"] for e in sent}

            def projected() -> bool:
                return all(item["lag"] == 0 and item["head"] >= len(sent) for item in ok(base, "/projections", analyst)["items"])

            def caught_up() -> bool:  # every event stored (the views count them), then every read model at the head
                if not projected():
                    return False
                views = [get(base, f"/customers/{urllib.parse.quote(c, safe='')}", analyst) for c in customers]
                return sum(sum(v["interaction_counts"].values()) for s, v in views if s == 200) == len(sent) and projected()

            wait_for(caught_up, timeout=120, interval=0.3, what="the events in every read model")
            yield Running(base, analyst)


@pytest.fixture
def api(settings: Settings) -> Iterator[str]:
    """`rapport api` alone, on the session's database: enough for the keys it refuses."""
    settings = settings.model_copy(update={"api_port": free_port()})
    with serving("api", settings_env(settings), settings.api_port) as base:
        yield base


# ---- the browser ------------------------------------------------------------------------------

def browser_available() -> None:
    """Debian's chromium and chromium-driver (scripts/bootstrap installs them); in CI they must be there."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    reason = f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver (scripts/bootstrap does)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; in CI the dashboard test must run")
    pytest.skip(reason)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    browser_available()
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,900",
                     "--disable-gpu", "--no-first-run", "--disable-extensions", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--lang=en-US"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, url: str, settled: tuple[str, ...] = ("ready",)) -> str:
    """Loads the dashboard and waits until it has finished asking the API; its final state."""
    driver.get(url)
    return wait_for(lambda: (s := driver.execute_script("return document.body.dataset.state || ''")) in settled and s,
                    timeout=60, what=f"the dashboard to reach {settled}")


def severe(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def shown(driver: Any) -> dict[str, str]:
    """Every element with a data-testid and its text (hidden ones too), but those of table rows repeated per item."""
    return driver.execute_script(
        "const found = {};"
        "for (const e of document.querySelectorAll('[data-testid]')) {"
        "  if (e.closest('[data-testid=alarm-row], [data-testid=alert-row]')) continue;"
        "  found[e.dataset.testid] = e.tagName === 'INPUT' ? e.value : e.textContent; }"
        "return found;")


def rows(driver: Any, row: str, prefix: str) -> list[dict[str, str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll(`[data-testid=${arguments[0]}]`)].map((tr) => Object.fromEntries("
        "  [...tr.querySelectorAll('[data-testid]')].map((c) => [c.dataset.testid.slice(arguments[1].length),"
        "   c.textContent])));", row, prefix)


def visible_text(driver: Any, testid: str) -> str:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
    assert element.is_displayed(), testid
    return str(element.text)


def screenshot(driver: Any, path: Path) -> None:
    """The whole page, not only the window (Chromium's DevTools protocol)."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


# ---- what the page must show: the API's answers, written as the page writes them ---------------

def text(value: Any) -> str:
    if value is None:
        return "—"
    return json.dumps(value) if isinstance(value, float) else str(value)


def money(amounts: dict[str, str]) -> str:
    return "\n".join(f"{amounts[c]} {c}" for c in sorted(amounts)) or "—"


def same_number(page: str, api: Any) -> bool:
    """A number as JavaScript writes it (7.0 is "7") against the API's JSON value."""
    return (page == "—" and api is None) or (api is not None and float(page) == float(api))


def expected_trend(running: Running, start: str, end: str) -> dict[str, str]:
    """Each week's NPS or CSAT per channel, each series' answers and its latest week."""
    want: dict[str, str] = {}
    for kind in ("nps", "csat"):
        for channel in CHANNELS:
            points = ok(running.base, "/satisfaction/trend", running.analyst, kind=kind, granularity="week", **{"from": start},
                        to=end, channel=None if channel == "all" else channel)["points"]
            for point in points:
                want[f"trend-{kind}-{channel}-{point['period_start']}"] = point[kind]
            want[f"trend-{kind}-{channel}-responses"] = sum(p["responses"] for p in points)
            want[f"trend-{kind}-{channel}-last-week"] = points[-1]["period_start"] if points else "—"
            want[f"trend-{kind}-{channel}-last"] = points[-1][kind] if points else None
    return want


def check_trend(page: dict[str, str], want: dict[str, Any]) -> None:
    for testid, value in want.items():
        if testid.endswith("-last-week"):
            assert page[testid] == value, testid
        elif testid.endswith("-responses"):
            assert page[testid] == str(value), testid
        else:
            assert same_number(page[testid], value), (testid, page[testid], value)
    cells = {k for k in page if re.fullmatch(r"trend-(nps|csat)-\w+-\d{4}-\d{2}-\d{2}", k) and page[k] != ""}
    assert cells == {k for k in want if re.fullmatch(r"trend-(nps|csat)-\w+-\d{4}-\d{2}-\d{2}", k)}


def last_answered_day(running: Running) -> date:
    days = [p["period_start"] for kind in ("nps", "csat") for p in ok(
        running.base, "/satisfaction/trend", running.analyst, kind=kind, granularity="day", **{"from": "0001-01-01"})["points"]]
    return date.fromisoformat(max(days))


def check_panels(driver: Any, running: Running) -> dict[str, str]:
    """Every panel's text against the API's answer for the page's own period; the page's texts."""
    base, key = running.base, running.analyst
    page = shown(driver)
    start, end, since = page["period-from"], page["period-to"], page["alarms-since"]
    # The default period: the 52 weeks up to the last day with answers; alarms of its last 30 days.
    last = last_answered_day(running)
    assert end == (last + timedelta(days=1)).isoformat()
    assert date.fromisoformat(start).isoweekday() == 1 and 364 <= (date.fromisoformat(end) - date.fromisoformat(start)).days < 371
    assert since == (last + timedelta(days=1 - 30)).isoformat()

    trend = expected_trend(running, start, end)
    check_trend(page, trend)
    assert int(page["trend-nps-all-responses"]) > 0 and int(page["trend-csat-phone-responses"]) > 0

    stages = ok(base, "/lifecycle/stages", key)["stages"]
    assert {s: page[f"stage-{s}"] for s in STAGES} == {s: str(stages[s]) for s in STAGES}
    assert sum(stages.values()) == 6 + len({e["customer"]["id"] for e in cdnow_sample()})

    flow = ok(base, "/lifecycle/flow", key, **{"from": start}, to=end)["transitions"]
    moved = {f"flow-{t['from_stage'] or 'new'}-{t['to_stage']}": str(t["customers"]) for t in flow}
    assert flow and {k: v for k, v in page.items() if re.fullmatch(r"flow-\w+-\w+", k) and v} == moved

    for category in ok(base, "/satisfaction/revenue-by-category", key)["categories"]:
        name = category["category"]
        assert page[f"revenue-{name}-customers"] == str(category["customers"])
        assert page[f"revenue-{name}-revenue"] == money(category["revenue"])
        assert page[f"revenue-{name}-per-customer"] == money(category["revenue_per_customer"])
    assert page["revenue-promoter-revenue"] == "300.00 USD"  # Ana's three purchases; money as the API writes it

    for item in ok(base, "/projections", key)["items"]:
        for field in ("position", "head", "lag", "lag_seconds", "parked"):
            assert same_number(page[f"projection-{item['name']}-{field}"], item[field]), (item, field)

    alarms = ok(base, "/satisfaction/alarms", key, since=f"{since}T00:00:00Z", limit="50")["items"]
    fields = ("name", "customer_id", "kind", "score", "answered_at", "channel", "revenue", "last_contact_at")
    assert rows(driver, "alarm-row", "alarm-") == [
        {f: money(item[f]) if f == "revenue" else text(item[f]) for f in fields} for item in alarms]
    assert {(a["kind"], a["score"]) for a in alarms} == {("nps", 3), ("csat", 1)}
    assert "Chi <b>Nguyen</b>" in [a["name"] for a in alarms]  # markup in a name is text, not HTML
    check_new_panels(driver, running, page, since)
    return page


def check_new_panels(driver: Any, running: Running, page: dict[str, str], since: str) -> None:
    """Value, segments and alerts (issue 16): against the API where it has the route, else "not available"."""
    base, key = running.base, running.analyst
    status, model = get(base, "/value/model", key)
    if status == 404 and "no value model" in model.get("detail", ""):
        assert page["value-status"].startswith("No model yet") and page["cohorts-status"].startswith("No model yet")
    elif status == 404:
        assert page["value-status"].startswith("Not available")
    else:
        assert status == 200, model
        for name, value in (*model.items(), *((f"bgnbd.{k}", v) for k, v in model["bgnbd"].items()),
                            *((f"gamma_gamma.{k}", v) for k, v in model["gamma_gamma"].items())):
            if not isinstance(value, dict):
                assert same_number(page[f"value-model-{name}"], value) if isinstance(value, float) else \
                    page[f"value-model-{name}"] == text(value), name
        buckets = ok(base, "/value/distribution", key, currency=model["currency"])["buckets"]
        for i, bucket in enumerate(buckets):
            assert page[f"value-bucket-{i}-from"] == bucket["from"]
            assert page[f"value-bucket-{i}-to"] == (bucket["to"] if bucket["to"] is not None else "and above")
            assert page[f"value-bucket-{i}-customers"] == str(bucket["customers"])
        assert not any(k.startswith(f"value-bucket-{len(buckets)}-") for k in page)
        for cohort in ok(base, "/value/cohorts", key, currency=model["currency"])["cohorts"]:
            for field in ("customers", "historical", "clv_12m"):
                assert page[f"cohort-{cohort['cohort']}-{field}"] == str(cohort[field]), (cohort, field)
    status, segments = get(base, "/segments", key)
    if status == 404:
        assert page["segments-status"].startswith("Not available")
    else:
        for segment in segments["segments"]:
            assert page[f"segment-{segment['name']}-customers"] == str(segment["customers"])
            assert page[f"segment-{segment['name']}-revenue"] == money(segment["revenue"])
    status, alerts = get(base, "/alerts", key, since=f"{since}T00:00:00Z")
    if status == 404:
        assert page["alerts-status"].startswith("Not available")
    else:
        fields = ("customer_id", "kind", "reason", "occurred_at", "raised_at", "revenue", "last_contact_at")
        assert rows(driver, "alert-row", "alert-") == [
            {f: money(item.get(f) or {}) if f == "revenue" else text(item.get(f)) for f in fields} for item in alerts["items"]]


# ---- the tests --------------------------------------------------------------------------------

def test_the_dashboard_shows_the_api_figures_without_a_console_error(browser: Any, running: Running) -> None:
    base, key = running.base, running.analyst
    offered = set(call("GET", f"{base}/openapi.json", None)[1]["paths"])
    if "/value/model" in offered:  # before the first fit, the value panels say so
        assert get(base, "/value/model", key)[0] == 404
        open_page(browser, f"{base}/dashboard#key={key}")
        assert visible_text(browser, "value-status").startswith("No model yet")
        unexpected = [e for e in severe(browser) if "/value/model - Failed to load resource" not in e["message"]]
        assert unexpected == [], unexpected  # the 404 of GET /value/model is the one failed request
        status, model = call("POST", f"{base}/value/model/fit", key,  # the papers' calibration period
                             {"calibration_end": "1997-09-30", "currency": "USD", "source": "cdnow"})
        assert status == 201, model

    open_page(browser, f"{base}/dashboard#key={key}")
    assert "key=" not in browser.current_url and key not in browser.current_url
    assert browser.current_url == f"{base}/dashboard"
    assert not browser.find_element("css selector", '[data-testid="message"]').is_displayed()
    assert visible_text(browser, "key-id") == f"rk_{key.split('_')[1]}_…"
    page = check_panels(browser, running)
    assert severe(browser) == []
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map((r) => r.name)")
    assert loaded and all(url.startswith(f"{base}/") for url in loaded), loaded  # nothing from another origin
    assert browser.execute_script("return typeof window.Chart") == "function"
    drawn = browser.execute_script("return [...document.querySelectorAll('canvas')].filter((c) => Chart.getChart(c)).length")
    assert drawn == 6 if "/value/model" in offered else drawn >= 4
    assert page["alarms-since"] and visible_text(browser, "stage-advocate") == page["stage-advocate"]

    path = ARTIFACTS / "dashboard.png"
    screenshot(browser, path)
    assert path.stat().st_size > 20_000
    print(f"\ndashboard screenshot: {path}")

    # The key stays for the tab (sessionStorage), not in the address.
    assert open_page(browser, f"{base}/dashboard") == "ready" and severe(browser) == []


def test_a_wrong_key_shows_the_apis_401_reason(browser: Any, api: str) -> None:
    status, refused = get(api, "/projections", WRONG_KEY)
    assert status == 401
    assert open_page(browser, f"{api}/dashboard#key={WRONG_KEY}", settled=("refused",)) == "refused"
    message = visible_text(browser, "message")
    assert message.startswith("The API refused the key (401)") and refused["detail"] in message
    assert WRONG_KEY not in browser.current_url
    assert browser.execute_script("return sessionStorage.length") == 0  # a refused key is not kept
    assert browser.find_element("css selector", '[data-testid="key-input"]').is_displayed()
    failed = severe(browser)  # one refused request, not one per panel
    assert len(failed) == 1 and "/projections - Failed to load resource" in failed[0]["message"] and "401" in failed[0]["message"]


def test_a_key_without_the_analyst_role_shows_the_apis_403_reason(browser: Any, settings: Settings, api: str) -> None:
    producer = api_key(settings, "producer", name="dashboard e2e producer")
    status, refused = get(api, "/projections", producer)
    assert status == 403
    open_page(browser, f"{api}/dashboard", settled=("no-key",))
    browser.find_element("css selector", '[data-testid="key-input"]').send_keys(producer)
    browser.find_element("css selector", '[data-testid="key-submit"]').click()
    wait_for(lambda: browser.execute_script("return document.body.dataset.state") == "refused", timeout=30,
             what="the key to be refused")
    assert refused["detail"] in visible_text(browser, "message") and "(403)" in visible_text(browser, "message")


def test_the_page_and_its_files_are_served_under_a_strict_policy(client: Any) -> None:
    client.headers.pop("Authorization")  # no key needed: no data in them
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "unsafe" not in policy and page.headers["x-content-type-options"] == "nosniff"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
    assert scripts and all('src="/dashboard/static/' in attributes and not body.strip() for attributes, body in scripts)
    assert "style=" not in page.text and "<style" not in page.text and "http" not in page.text
    for name, media_type in dashboard.FILES.items():
        served = client.get(f"/dashboard/static/{name}")
        assert served.status_code == 200 and served.headers["content-type"] == media_type, name
        assert served.content == (dashboard.STATIC / name).read_bytes()
    for name in ("../dashboard.py", "..%2Fdashboard.py", "dashboard.html", "vendor/chart.js/LICENSE.md", "nothing.js"):
        assert client.get(f"/dashboard/static/{name}").status_code == 404, name
    assert "/dashboard" not in client.get("/openapi.json").json()["paths"]


def test_the_vendored_chart_library_is_the_one_its_notes_name() -> None:
    vendored = dashboard.STATIC / "vendor" / "chart.js"
    notes = (vendored / "VENDORED.md").read_text()
    for name in ("chart.umd.min.js", "LICENSE.md"):
        digest = hashlib.sha256((vendored / name).read_bytes()).hexdigest()
        assert digest in notes, f"{name}: sha256 {digest} is not the one VENDORED.md gives; update one or the other"
    version = re.search(r"\| version \| (\d+\.\d+\.\d+)", notes)
    assert version and f"Chart.js v{version.group(1)}" in (vendored / "chart.umd.min.js").read_text()[:200]
