"""Property-based tests of the HTTP API over its own OpenAPI document, against a real `rapport api`.

The property, for every route: no answer is a server error (5xx), and every error answer carries
a JSON body with a `detail`. `GET /customers/{id}?as_of=`/`known_at=` (contract §5) is built from
the event store: a known customer may be unknown at that time (404), never a server error.

Every route but `/health` needs an API key (issue 15). Each request schemathesis makes is sent twice:
with an admin key, which every route must serve (never 401/403), and with an analyst key, which the
analyst's routes must serve too and every other route must refuse with a 403 naming the role (POST
/events: producer; audit routes and `as_of`/`known_at` on a customer: auditor; keys and identity
changes and erasure: admin), never a 2xx there. The hypothesis tests act as an admin.

The API runs as a child process (`rapport api`) on the session's test database, on a topic of the
test's own. A few customers are published through Kafka first and ingested and projected here, so
that the routes of one customer also meet existing customers, not only 404s:

- schemathesis generates requests from `GET /openapi.json` (examples, coverage and fuzzing phases,
  positive and negative data). The document is given the seeded customer ids as examples of
  `customer_id`, and `POST /events` (which reads its body itself, so FastAPI documents none) a
  request body shaped like the envelope of contract §1.
- hypothesis drives the routes with the known customer ids and with the values schemathesis does
  not think of: dates and times of every year and offset, forged and real paging cursors, event
  bodies holding NUL characters and lone surrogate escapes.

Nothing here is ingested after the seed: events that `POST /events` accepts stay on the test's
topic, which is deleted afterwards, so other tests never see them. Generation is derandomized and
bounded (MAX_EXAMPLES below): the whole file takes about 40 s on the quiet 2-core development machine
(1–2 minutes when it is busy). `RAPPORT_FUZZ_SCALE=10` makes ten times as many examples of each kind;
`RAPPORT_FUZZ_RANDOM=1` draws new hypothesis examples on each run instead of the fixed sequence.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from eventstore.store import InteractionLog
from services.bootstrap import ingest_consumer, projector
from services.http.app import create_app
from services.settings import Settings
from tests.conftest import settings_env
from tests.support import api_key, drain, end_offsets, envelope, publish, serving

pytestmark = pytest.mark.e2e

# Bounded so that the file takes about 40 s on the quiet 2-core machine (1–2 minutes when it is busy):
# schemathesis makes up to MAX_EXAMPLES fuzzed requests per operation (23 operations) besides its
# examples and coverage cases (about 970 cases in all, each sent with two keys); the hypothesis tests
# make PARAMETER_EXAMPLES and EVENT_EXAMPLES requests. RAPPORT_FUZZ_SCALE multiplies them all.
SCALE = max(1, int(os.environ.get("RAPPORT_FUZZ_SCALE", "1")))
MAX_EXAMPLES = 5 * SCALE
PARAMETER_EXAMPLES = 250 * SCALE
EVENT_EXAMPLES = 80 * SCALE
SEED = 20260301  # schemathesis' seed (coverage values, per-operation seeds); hypothesis is derandomized

# Checks that don't apply to tests of a live server: its answers take milliseconds, not
# microseconds (too_slow); schemathesis filters generated values it cannot send (filter_too_much);
# bodies may be large (data_too_large, large_base_example); and the server, database and seeded
# customers are function-scoped fixtures shared by every example on purpose (nothing here changes
# what the next example reads).
NOT_APPLICABLE = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                  HealthCheck.large_base_example, HealthCheck.function_scoped_fixture]
BOUNDED = hypothesis.settings(deadline=None, derandomize=not os.environ.get("RAPPORT_FUZZ_RANDOM"), database=None,
                              suppress_health_check=NOT_APPLICABLE, print_blob=False)

TYPES = ("call", "email", "purchase", "survey_response")
AUDIT_PARAMETERS = ("as_of", "known_at")


# --------------------------------------------------------------------------------------------
# The property, on one answer.


VIEW_ROUTE = "/customers/{customer_id}"


def detail_problem(status: int, content: bytes) -> str | None:
    """Why an error answer breaks the rule "JSON with a `detail` sentence", or None when it keeps it."""
    if status < 400:
        return None
    try:
        body = json.loads(content)
    except ValueError:
        return f"the body is not JSON: {content[:200]!r}"
    if not isinstance(body, dict) or "detail" not in body:
        return f"the JSON body has no `detail`: {body!r:.300}"
    detail = body["detail"]
    if isinstance(detail, str) and detail.strip():
        return None
    return f"`detail` is not a sentence: {detail!r:.300}"


def no_server_error(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                    case: schemathesis.Case) -> bool | None:
    """schemathesis' `not_a_server_error`: no route answers a 5xx."""
    return not_a_server_error(ctx, response, case)


def error_has_a_detail(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                       case: schemathesis.Case) -> bool | None:
    problem = detail_problem(response.status_code, response.content)
    if problem:
        raise AssertionError(f"{response.status_code} answer breaks 'errors carry a detail': {problem}")
    return None


# --------------------------------------------------------------------------------------------
# Who may do what (issue 15): the role each route needs; admin may do everything.

ADMIN, ANALYST = "admin", "analyst"
OPEN = None  # no key needed
ANY_KEY = "any"  # a key of any role
# A route added with another role than the analyst's shows up here as "a key with the analyst role was refused".
ROUTE_ROLES: dict[tuple[str, str], str | None] = {
    ("GET", "/health"): OPEN,
    ("GET", "/schema/envelope.json"): ANY_KEY,
    ("POST", "/events"): "producer",
    ("GET", "/audit/customers/{customer_id}/events"): "auditor",
    ("GET", "/audit/verify"): "auditor",
    ("GET", "/audit/heads"): "auditor",
    ("POST", "/customers/{customer_id}/unmerge"): ADMIN,
    ("POST", "/customers/{customer_id}/allow"): ADMIN,
    ("POST", "/customers/{customer_id}/forget"): ADMIN,
    ("GET", "/keys"): ADMIN,
    ("POST", "/keys"): ADMIN,
    ("POST", "/keys/{key_id}/revoke"): ADMIN,
}  # every other route: analyst


def role_needed(method: str, route: str, sent_url: str) -> str | None:
    """The role a request needs: its route's; a customer's view at a point in time (a query naming
    `as_of` or `known_at`, even empty) is the auditors' (contract §5)."""
    role = ROUTE_ROLES.get((method, route), ANALYST)
    query = urllib.parse.parse_qsl(urllib.parse.urlsplit(sent_url).query, keep_blank_values=True)
    if role == ANALYST and route.startswith("/customers/") and {n for n, _ in query} & set(AUDIT_PARAMETERS):
        return "auditor"
    return role


def another_key_sent(request: Any, key: str) -> bool:
    """Whether schemathesis sent a key of its own making beside ours (then a 401 is the right answer)."""
    sent = [request.headers.get("X-API-Key"), (request.headers.get("Authorization") or "").removeprefix("Bearer ")]
    return any(value is not None and value.strip() != key for value in sent)


def is_json(body: bytes | str | None) -> bool:
    try:
        json.loads(body or b"")
    except ValueError:
        return False
    return True


def access_problem(role: str, key: str, needed: str | None, request: Any, status: int, content: bytes,
                   admin_status: int | None = None) -> str | None:
    """Why the answer to a request with a key of `role` breaks the rules of issue 15, or None.
    A key may do what its role may do (admin: everything) and is never refused there; anything
    else is refused with a 403 naming the role needed, never answered 2xx. One exception: a body
    that is not JSON at all gets the same 400 or 422 whoever sends it (`admin_status`), as FastAPI
    decodes a declared body before it runs any dependency."""
    if status == 401 and another_key_sent(request, key):
        return None
    allowed = needed in (OPEN, ANY_KEY, role) or role == ADMIN
    if allowed:
        return f"a key with the {role} role was refused" if status in (401, 403) else None
    if status == admin_status and status in (400, 422) and not is_json(request.body):
        return None
    if status != 403:
        return f"needs the {needed} role, yet a key with only the {role} role got {status}, not 403"
    detail = str(json.loads(content).get("detail", ""))
    if f"needs the {needed} role" not in detail:
        return f"the 403 does not say the {needed} role is needed: {detail!r:.300}"
    return None


def keeps_roles(role: str, key: str, admin_status: int | None = None) -> Any:
    """The check that answers to `role`'s key keep the rules of issue 15 (`access_problem`)."""

    def check(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
        method = (response.request.method or "").upper()
        if method != case.operation.method.upper():  # schemathesis tries methods the route has not: never served
            problem = f"{method} is not a method of {case.operation.path}, yet it was served" \
                if response.status_code < 400 else None
        else:
            needed = role_needed(method, case.operation.path, response.request.url or "")
            problem = access_problem(role, key, needed, response.request, response.status_code, response.content,
                                     admin_status)
        if problem:
            raise AssertionError(f"{case.method.upper()} {response.request.url} answered {response.status_code}: "
                                 f"{problem}")
        return None

    check.__name__ = f"{role}_role_is_kept"
    return check


# --------------------------------------------------------------------------------------------
# Seeded customers and the real API process.


@dataclass(frozen=True)
class Seeded:
    """The customers published before the API starts, by id, with their events."""

    customers: dict[str, list[dict[str, Any]]]

    @property
    def ids(self) -> list[str]:
        return list(self.customers)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def seed_events(now: datetime) -> dict[str, list[dict[str, Any]]]:
    """A handful of customers of every kind of key and stage, recent (so the default windows of the
    trend and alarm routes hold them) and far from the years other tests keep to themselves."""
    tag = uuid.uuid4().hex[:10]

    def ago(days: float) -> str:
        return iso(now - timedelta(days=days))

    def purchase(c: str, days: float, amount: str, sku: str, **customer: str) -> dict[str, Any]:
        return envelope(c, "purchase", ago(days), {"order_id": f"o-{uuid.uuid4().hex[:8]}", "amount": amount,
                                                  "currency": "USD", "items": [{"sku": sku, "quantity": 2,
                                                                                "unit_price": amount}]}, **customer)

    advocate, slashed, detractor = f"crm-prop-{tag}", f"crm/prop-{tag}/ü", f"crm-prop-alarm-{tag}"
    # Each identifier belongs to one of them: a shared one would link them into one customer (issue 14).
    email, phone = f"prop-{tag}@example.com", f"+9477{int(tag[:6], 16) % 10_000_000:07d}"
    own_email, own_phone = f"prop-ana-{tag}@example.com", f"+9478{int(tag[:6], 16) % 10_000_000:07d}"
    first_call = envelope(advocate, "call", ago(50), {"direction": "inbound", "duration_seconds": 300},
                          name="Ana Prop", phone=own_phone)
    complaint = envelope(detractor, "email", ago(12), {"direction": "inbound", "subject": "broken"})
    return {
        advocate: [
            first_call,
            envelope(advocate, "email", ago(45), {"direction": "inbound", "subject": "order?"}, email=own_email),
            envelope(advocate, "email", ago(44), {"direction": "outbound"}),
            purchase(advocate, 40, "100.00", "sku-9"),
            purchase(advocate, 20, "50.50", "sku-1"),
            envelope(advocate, "survey_response", ago(10), {"kind": "nps", "score": 10,
                                                            "about_event_id": first_call["event_id"]}),
            envelope(advocate, "survey_response", ago(9), {"kind": "csat", "score": 5}),
            # Two events at the same instant: the timeline's keyset order breaks the tie by event_id.
            envelope(advocate, "call", ago(5), {"direction": "outbound", "duration_seconds": 0,
                                                "outcome": "no_answer"}, event_id=f"test:tie:a:{tag}"),
            envelope(advocate, "call", ago(5), {"direction": "outbound", "duration_seconds": 7},
                     event_id=f"test:tie:b:{tag}"),
        ],
        slashed: [envelope(slashed, "call", ago(3), {"direction": "outbound", "duration_seconds": 5})],
        detractor: [
            purchase(detractor, 400, "10.00", "sku-2"),
            complaint,
            envelope(detractor, "survey_response", ago(11), {"kind": "nps", "score": 3,
                                                             "about_event_id": complaint["event_id"]}),
        ],
        # Known by an email and by a phone only: found by them (their ids are generated: README).
        email: [{**envelope("", "email", ago(8), {"direction": "inbound"}), "customer": {"email": email}}],
        phone: [{**envelope("", "survey_response", ago(7), {"kind": "csat", "score": 1}),
                 "customer": {"phone": phone}}],
    }


@pytest.fixture
def seeded(settings: Settings, store: InteractionLog) -> Seeded:
    """Publish the customers through Kafka, ingest them to the end of the topic, project to the head."""
    customers = seed_events(datetime.now(UTC).replace(microsecond=0))
    publish(settings, [event for events in customers.values() for event in events])
    consumer = ingest_consumer(settings, store)
    drain(consumer, settings)
    assert consumer.stats.dead_lettered == 0, "the seed must be valid"
    projector(settings, store).catch_up()
    return Seeded(customers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def keys(settings: Settings) -> dict[str, str]:
    """An admin key and an analyst key of the test's database, by role."""
    return {role: api_key(settings, role, name=f"properties-{role}") for role in (ADMIN, ANALYST)}


def call(method: str, url: str, body: bytes | None = None, key: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - localhost
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def api(settings: Settings, seeded: Seeded, store: InteractionLog) -> Iterator[str]:
    """`rapport api` (no ingest: what POST /events accepts stays on the test's topic), with a projector
    following the event store as in `rapport run` (an erasure waits for the read models to pass it); its URL."""
    port = free_port()
    env = settings_env(settings.model_copy(update={"api_port": port}), RAPPORT_LOG_LEVEL="WARNING")
    stop, failures = threading.Event(), []

    def follow() -> None:
        try:
            projector(settings, store).run(stop)
        except BaseException as error:
            failures.append(error)
            raise

    thread = threading.Thread(target=follow, name="projector", daemon=True)
    thread.start()
    try:
        with serving("api", env, port) as base:
            yield base
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures, f"the projector stopped on what the API wrote: {failures[0]!r}"


# --------------------------------------------------------------------------------------------
# 1. schemathesis over the OpenAPI document.

ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event_id", "type", "occurred_at", "customer", "data"],
    "properties": {
        "event_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "type": {"enum": list(TYPES)},
        "occurred_at": {"type": "string", "format": "date-time"},
        "customer": {
            "type": "object", "minProperties": 1,
            "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 200},
                           "email": {"type": "string", "minLength": 1, "maxLength": 200},
                           "phone": {"type": "string", "minLength": 1, "maxLength": 200},
                           "name": {"type": "string", "maxLength": 500}},
        },
        "source": {"type": "string"},
        "version": {"type": "integer"},
        "data": {"type": "object"},
    },
}


def openapi_for_tests(document: dict[str, Any], seeded: Seeded) -> dict[str, Any]:
    """The API's own document, plus what the test knows and the document cannot: the seeded ids as
    examples of `customer_id`, and a request body for `POST /events` while the route documents none."""
    document = deepcopy(document)
    examples = {f"seeded{i}": {"value": customer_id} for i, customer_id in enumerate(seeded.ids)}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "customer_id" and parameter["in"] == "path":
                    parameter["examples"] = examples
        if path == "/events" and "requestBody" not in operations["post"]:
            valid = envelope(f"crm-prop-posted-{uuid.uuid4().hex[:8]}", "call", "2026-03-01T10:15:00+05:30",
                             {"direction": "inbound", "duration_seconds": 310})
            operations["post"]["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"anyOf": [ENVELOPE_SCHEMA,
                                     {"type": "array", "items": ENVELOPE_SCHEMA, "minItems": 1, "maxItems": 3}]},
                "examples": {"one": {"value": valid}, "array": {"value": [valid, {**valid, "event_id": "x:2"}]}},
            }}}
    return document


@pytest.fixture
def api_schema(api: str, seeded: Seeded, keys: dict[str, str], request: pytest.FixtureRequest) -> schemathesis.BaseSchema:
    # schemathesis 4.32.5's lazy loader names each operation's subtest through `node._nodeid`,
    # which pytest 9 no longer has: give it one (only schemathesis reads or writes it).
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    status, content = call("GET", f"{api}/openapi.json")
    assert status == 200
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        # Explicit, so a schemathesis.toml or a CI environment cannot change what runs here.
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
    })
    schema = schemathesis.openapi.from_dict(openapi_for_tests(json.loads(content), seeded), config=config)
    # Sent with every request, over any Authorization header schemathesis makes up.
    schema.config.update(base_url=api, headers={"Authorization": f"Bearer {keys[ADMIN]}"})
    return schema


lazy_schema = schemathesis.pytest.from_fixture("api_schema")


@lazy_schema.parametrize()
@hypothesis.settings(BOUNDED, max_examples=MAX_EXAMPLES)
def test_no_route_answers_a_server_error_and_every_error_has_a_detail_for_an_admin_or_an_analyst(
        case: schemathesis.Case, keys: dict[str, str]) -> None:
    """The same request as an admin (who may do everything) and as an analyst (who may read)."""
    admin = case.call_and_validate(checks=[no_server_error, error_has_a_detail, keeps_roles(ADMIN, keys[ADMIN])],
                                   timeout=30)
    analyst = case.call(headers={"Authorization": f"Bearer {keys[ANALYST]}"}, timeout=30)
    case.validate_response(analyst, checks=[no_server_error, error_has_a_detail,
                                            keeps_roles(ANALYST, keys[ANALYST], admin.status_code)])


# --------------------------------------------------------------------------------------------
# 2. hypothesis: known customers, times of every year and offset, cursors, event bodies.

ZONES = [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12)), timezone(timedelta(hours=5, minutes=30)),
         timezone(timedelta(hours=-23, minutes=-59))]


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def year(n: int) -> datetime:
    """January 1st of year n, naive, as hypothesis takes the bounds of aware datetimes."""
    return datetime(n, 1, 1, tzinfo=UTC).replace(tzinfo=None)


# Times as a client may write them: dates (a 10-character value is a date), RFC 3339 with any
# offset (some past the years 1–9999 once in UTC), often near the seeded data so that windows
# hold something; and, less often, naive ones (rejected) and anything at all.
times = st.one_of(
    st.dates().map(date.isoformat),
    st.datetimes(timezones=st.sampled_from(ZONES)).map(rfc3339),
    st.datetimes(min_value=year(2024), max_value=year(2028), timezones=st.just(UTC)).map(rfc3339),
    st.datetimes().map(datetime.isoformat),
    st.text(max_size=25),
)
maybe_times = st.none() | times
# Any JSON value, small.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def cursor_of(*values: Any) -> str:
    """A cursor of the API's own encoding, made by a client."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def cursors_with(real: list[str]) -> st.SearchStrategy[str | None]:
    """None (the first page), cursors the API gave (for any customer), forged ones, and text."""
    return st.one_of(
        st.none(),
        st.sampled_from(real),
        st.tuples(times | json_values, st.text(max_size=10) | json_values).map(lambda pair: cursor_of(*pair)),
        st.lists(json_values, max_size=3).map(lambda values: cursor_of(*values)),
        st.text(max_size=30),
    )


limits = st.one_of(st.none(), st.integers(min_value=1, max_value=10), st.integers(min_value=-2, max_value=502),
                   st.text(max_size=6))


def url(base: str, path: str, query: dict[str, Any]) -> str:
    present = {name: value for name, value in query.items() if value is not None}
    return f"{base}{path}" + (f"?{urllib.parse.urlencode(present)}" if present else "")


def customer_path(customer_id: str, tail: str = "") -> str:
    return "/customers/" + urllib.parse.quote(customer_id, safe="") + tail


@dataclass(frozen=True)
class Get:
    route: str  # the OpenAPI path
    path: str  # with the customer id, quoted
    query: dict[str, Any]  # None: not sent


@st.composite
def requests_of(draw: st.DrawFn, ids: list[str], real_cursors: list[str]) -> Get:
    """One GET: a route with its parameters drawn as a client might send them."""
    customer = draw(st.sampled_from(ids) | st.text(min_size=1, max_size=20).map(lambda s: "crm-prop-unknown-" + s))
    choice = draw(st.sampled_from(["view", "timeline", "lifecycle", "stages", "flow", "trend", "alarms", "revenue"]))
    cursors = cursors_with(real_cursors)
    if choice == "view":
        audit = draw(st.just({}) | st.fixed_dictionaries({}, optional={"as_of": times, "known_at": times}))
        return Get(VIEW_ROUTE, customer_path(customer), audit)
    if choice == "timeline":
        return Get(VIEW_ROUTE + "/timeline", customer_path(customer, "/timeline"),
                   {"limit": draw(limits), "cursor": draw(cursors)})
    if choice == "lifecycle":
        return Get(VIEW_ROUTE + "/lifecycle", customer_path(customer, "/lifecycle"), {})
    if choice == "stages":
        return Get("/lifecycle/stages", "/lifecycle/stages", {"as_of": draw(maybe_times)})
    if choice == "flow":
        return Get("/lifecycle/flow", "/lifecycle/flow", {"from": draw(maybe_times), "to": draw(maybe_times)})
    if choice == "trend":
        return Get("/satisfaction/trend", "/satisfaction/trend", {
            "kind": draw(st.none() | st.sampled_from(["nps", "csat", "NPS", ""])),
            "granularity": draw(st.none() | st.sampled_from(["day", "week", "month", "year"])),
            "from": draw(maybe_times), "to": draw(maybe_times),
            "channel": draw(st.none() | st.sampled_from(["phone", "email", "purchase", "unknown", "fax"])),
        })
    if choice == "alarms":
        return Get("/satisfaction/alarms", "/satisfaction/alarms",
                   {"since": draw(maybe_times), "limit": draw(limits), "cursor": draw(cursors)})
    return Get("/satisfaction/revenue-by-category", "/satisfaction/revenue-by-category", {"as_of": draw(maybe_times)})


def check_answer(method: str, route: str, sent_url: str, status: int, content: bytes) -> None:
    """The property on one answer: no 5xx; errors carry a `detail`."""
    assert status < 500, f"{method} {sent_url} answered {status}: {content[:500]!r}"
    problem = detail_problem(status, content)
    assert problem is None, f"{method} {sent_url} answered {status}: {problem}"


def newest_first(items: list[dict[str, Any]]) -> bool:
    keys = [(datetime.fromisoformat(item["occurred_at"]), item["event_id"]) for item in items]
    return keys == sorted(keys, reverse=True)


def test_known_customers_parameters_paging_and_event_bodies(api: str, seeded: Seeded, settings: Settings,
                                                           keys: dict[str, str]) -> None:
    """Three properties on one server (starting one costs seconds), as an admin: the GET routes with
    hand-written parameters, timeline paging, and POST /events bodies."""
    gets_of_known_customers_and_odd_parameters(api, seeded, keys[ADMIN])
    timeline_pages_give_every_event_once_whatever_the_limit(api, seeded, keys[ADMIN])
    posted_event_bodies(api, settings, keys[ADMIN])


def gets_of_known_customers_and_odd_parameters(api: str, seeded: Seeded, key: str) -> None:
    ids = seeded.ids
    known_paths = {customer_path(c, tail) for c in ids for tail in ("", "/timeline", "/lifecycle")}
    real_cursors = [json.loads(call("GET", url(api, path, {"limit": 1, **query}), key=key)[1])["next_cursor"]
                    for path, query in [(customer_path(ids[0], "/timeline"), {}),
                                        ("/satisfaction/alarms", {"since": "2000-01-01"})]]
    assert all(real_cursors), "the seed has pages to follow"

    @hypothesis.settings(BOUNDED, max_examples=PARAMETER_EXAMPLES)
    @given(request=requests_of(ids, real_cursors))
    # Defaults computed from a time near the year 1 ("30 days" or "one year before `to`").
    @example(request=Get("/lifecycle/flow", "/lifecycle/flow", {"to": "0001-01-01"}))
    @example(request=Get("/satisfaction/trend", "/satisfaction/trend", {"to": "0001-01-01"}))
    @example(request=Get("/satisfaction/trend", "/satisfaction/trend", {"to": "9999-12-31", "from": "9999-12-01"}))
    @example(request=Get("/lifecycle/stages", "/lifecycle/stages", {"as_of": "0001-01-01T00:00:00+14:00"}))
    # A NUL in the path of an admin's (or auditor's) request, which the access log records.
    @example(request=Get(VIEW_ROUTE, customer_path("crm-prop-unknown-\x00"), {}))
    def check(request: Get) -> None:
        sent_url = url(api, request.path, request.query)
        status, content = call("GET", sent_url, key=key)
        check_answer("GET", request.route, sent_url, status, content)
        if request.path not in known_paths:
            return
        sent = {name for name, value in request.query.items() if value is not None}
        if request.route != VIEW_ROUTE + "/timeline":
            if not sent & set(AUDIT_PARAMETERS):
                assert status == 200, (sent_url, status, content[:300])
            return
        limit = request.query["limit"]
        if request.query["cursor"] is None and (limit is None or isinstance(limit, int) and 1 <= limit <= 500):
            assert status == 200, (sent_url, status, content[:300])
            items = json.loads(content)["items"]
            assert 0 < len(items) <= (limit or 50)
            assert newest_first(items), "newest occurred_at first, ties by event_id"

    check()


def timeline_pages_give_every_event_once_whatever_the_limit(api: str, seeded: Seeded, key: str) -> None:
    """Following `next_cursor` from the first page gives each of the customer's events exactly once."""
    customer_id = max(seeded.ids, key=lambda c: len(seeded.customers[c]))
    expected = sorted(event["event_id"] for event in seeded.customers[customer_id])

    @hypothesis.settings(BOUNDED, max_examples=len(expected) + 2)
    @given(limit=st.integers(min_value=1, max_value=len(expected) + 1))
    def check(limit: int) -> None:
        seen: list[str] = []
        cursor = None
        for _ in range(len(expected) + 1):
            query = {"limit": limit, "cursor": cursor}
            status, content = call("GET", url(api, customer_path(customer_id, "/timeline"), query), key=key)
            assert status == 200, content[:300]
            page = json.loads(content)
            assert len(page["items"]) <= limit and newest_first(page["items"])
            seen += [item["event_id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == expected

    check()


# Strings as a producer's bug might send them: NUL, lone surrogate escapes, nothing, non-ASCII.
odd_text = st.text(max_size=12) | st.sampled_from(["", "\x00", "\ud800", "a\udfffb", "ü", "\U0001f600"])
envelopes = st.fixed_dictionaries(
    {"event_id": odd_text, "type": st.sampled_from([*TYPES, "chat"]) | json_values, "occurred_at": times | json_values,
     "customer": st.fixed_dictionaries({}, optional={"id": odd_text, "email": odd_text, "phone": odd_text,
                                                     "name": odd_text}) | json_values,
     "data": st.dictionaries(odd_text, json_values | odd_text, max_size=4) | json_values},
    optional={"source": odd_text, "version": json_values},
)


identifiers = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=30)
directions = st.sampled_from(["inbound", "outbound"])
valid_data = {
    "call": st.fixed_dictionaries({"direction": directions, "duration_seconds": st.integers(0, 604_800)},
                                  optional={"outcome": st.sampled_from(["resolved", "unresolved", "voicemail",
                                                                        "no_answer"]), "agent": identifiers}),
    "email": st.fixed_dictionaries({"direction": directions}, optional={"subject": st.text(max_size=20)}),
    "purchase": st.fixed_dictionaries({
        "order_id": identifiers, "currency": st.sampled_from(["USD", "EUR", "LKR", "JPY"]),
        "amount": st.decimals(min_value=0, max_value=10**9, places=2).map(str)}),
    "survey_response": st.one_of(
        st.fixed_dictionaries({"kind": st.just("nps"), "score": st.integers(0, 10)}),
        st.fixed_dictionaries({"kind": st.just("csat"), "score": st.integers(1, 5)})),
}
valid_envelopes = st.sampled_from(TYPES).flatmap(lambda event_type: st.builds(
    lambda event_id, customer_id, at, data: {"event_id": event_id, "type": event_type, "occurred_at": at,
                                             "customer": {"id": customer_id}, "data": data},
    identifiers, identifiers,
    st.datetimes(min_value=year(1900), max_value=year(2100), timezones=st.sampled_from(ZONES)).map(rfc3339),
    valid_data[event_type]))


@st.composite
def event_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["one", "array", "valid", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "valid":
        return json.dumps(draw(valid_envelopes | st.lists(valid_envelopes, min_size=1, max_size=3))).encode()
    value = draw(envelopes) if kind == "one" else draw(st.lists(envelopes | json_values, max_size=3))
    # ensure_ascii: a lone surrogate goes out as the escape \ud800, as JSON allows it to be written.
    return json.dumps(value).encode()


def posted_event_bodies(api: str, settings: Settings, key: str) -> None:
    before = sum(end_offsets(settings).values())
    accepted: list[str] = []

    @hypothesis.settings(BOUNDED, max_examples=EVENT_EXAMPLES)
    @given(body=event_bodies())
    @example(body=b'[{"event_id": "a\\udfffb", "type": "call"}]')
    @example(body=b'{"event_id": "x", "type": {}, "occurred_at": "2026-03-01T10:15:00Z", "customer": {"id": "c"}, '
                  b'"data": {}}')
    def check(body: bytes) -> None:
        status, content = call("POST", f"{api}/events", body, key=key)
        check_answer("POST", "/events", f"{api}/events", status, content)
        assert status in (202, 422), (status, content[:300])
        if status == 202:
            accepted.extend(json.loads(content)["accepted"])

    check()
    assert accepted, "some generated bodies are valid and accepted"
    # Accepted events are on the test's topic: Kafka acknowledged them before the 202.
    assert sum(end_offsets(settings).values()) - before == len(accepted)


# --------------------------------------------------------------------------------------------
# Regression tests of the server errors these properties found (in-process: no seed needed).


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = f"Bearer {api_key(settings, ADMIN)}"
        yield test_client


def test_a_time_near_the_year_1_is_not_a_server_error(client: TestClient) -> None:
    """The default start of a window ("30 days" / "one year before `to`") was computed even when
    `from` was given, by a subtraction that overflowed below the year 1: 500 (OverflowError)."""
    for path, query in [
        ("/lifecycle/flow", {"to": "0001-01-01"}),
        ("/lifecycle/flow", {"from": "0001-01-01", "to": "0001-01-20T00:00:00Z"}),
        ("/satisfaction/trend", {"to": "0001-01-01"}),
        ("/satisfaction/trend", {"granularity": "month", "from": "0001-01-01", "to": "0001-12-31"}),
    ]:
        response = client.get(path, params=query)
        check_answer("GET", path, str(response.url), response.status_code, response.content)
        assert response.status_code in (200, 422), (path, query, response.text)
    assert client.get("/lifecycle/flow", params={"from": "0001-01-01", "to": "0001-01-20"}).json()["from"] \
        == "0001-01-01T00:00:00Z"


def test_a_rejected_event_id_with_a_lone_surrogate_is_shown_not_a_server_error(client: TestClient) -> None:
    """A rejected event's `event_id` is echoed in the 422; one holding a lone surrogate escape
    (`"\\ud800"`: valid JSON, not UTF-8 text) made the answer itself fail: 500 (UnicodeEncodeError)."""
    response = client.post("/events", content=b'[{"event_id": "x\\ud800y", "type": "call"}]')
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["index"] == 0 and error["event_id"] == "x\\ud800y"  # as written in the request


def test_an_event_whose_type_is_not_text_is_rejected_not_a_server_error(client: TestClient) -> None:
    """`"type": {}` (or a list) made validation raise TypeError (unhashable) instead of a reason: 500."""
    for event_type in ({}, [], {"call": 1}):
        body = envelope("crm-prop-x", "call", "2026-03-01T10:15:00Z", {"direction": "inbound",
                                                                        "duration_seconds": 1})
        response = client.post("/events", json={**body, "type": event_type})
        assert response.status_code == 422, response.text
        [error] = response.json()["errors"]
        assert error["index"] == 0 and error["event_id"] == body["event_id"] and "type" in error["reason"]
