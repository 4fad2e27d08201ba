"""`rapport demo`: a generated, realistic data set through Kafka into the single customer view."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from tqdm import tqdm

from consumers.ingest import kafka_producer
from domain.contract import utc_now
from eventstore import tables
from projections import customer_360
from services import cdnow
from services.bootstrap import interaction_log, projector
from services.processes import Processes
from services.projections_cli import print_report, rebuild
from services.settings import Settings
from services.topics import ensure_topics
from tools.demo_data import DemoMessage, generate_demo_data
from tools.identity_story import HOUSEHOLD, PERSON, identity_story


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def publish(settings: Settings, messages: list[Any]) -> None:
    producer = kafka_producer(settings.kafka_client_config)
    with tqdm(total=len(messages), desc="publishing to Kafka", unit="msg", file=sys.stderr) as bar:
        for i, message in enumerate(messages):
            producer.send(settings.topic, key=message.key, value=message.value)
            if i % 1000 == 999:
                bar.update(1000)
        producer.flush()
        bar.update(len(messages) - bar.n)
    producer.close()


def end_offsets(settings: Settings) -> dict[int, int]:
    consumer = KafkaConsumer(**settings.kafka_client_config)
    try:
        partitions = [TopicPartition(settings.topic, p) for p in consumer.partitions_for_topic(settings.topic) or []]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def _wait(bar_desc: str, total: int, progress: Any, processes: Processes, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    with tqdm(total=total, desc=bar_desc, unit="ev", file=sys.stderr) as bar:
        while True:
            done = progress()
            bar.update(done - bar.n)
            if done >= total:
                return
            if processes.stopping:
                raise KeyboardInterrupt
            processes.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{bar_desc}: not done after {timeout:.0f} s ({done} of {total})")
            time.sleep(0.3)


DEMO_ROLES = ("producer", "analyst", "auditor")


def _demo_key(settings: Settings) -> str:
    """A key for the demo's requests and the commands it prints (a new one each run: keys are shown once)."""
    import psycopg

    from services import access
    from services.bootstrap import conninfo, ensure_access_tables

    ensure_access_tables(settings)
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        return access.create_key(conn, f"demo {utc_now():%Y-%m-%d %H:%M}", DEMO_ROLES)[1]


_KEY: dict[str, str] = {}  # the demo's key, sent by `_get_json`


def _get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"X-API-Key": _KEY["key"]} if "key" in _KEY else {})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our own localhost API
        return json.loads(response.read())


def run_demo(settings: Settings, customers: int, events: int, seed: int, republish: bool, serve: bool) -> int:
    ensure_topics(settings.kafka_client_config, settings.topic, settings.dead_letter_topic)
    store = interaction_log(settings)
    in_topic = sum(end_offsets(settings).values())
    in_store = store.recorder.max_notification_id() or 0
    data = None
    if (in_topic or in_store) and not republish:
        _say(f"topic {settings.topic!r} holds {in_topic} messages and the event store {in_store} events already; "
             "not publishing the demo data again (use --republish)")
    else:
        _say(f"generating {customers} customers and {events} events over 18 months ...")
        data = generate_demo_data(customers=customers, events=events, seed=seed)
        kinds: dict[str, int] = {}
        for m in data.messages:
            kinds[m.kind] = kinds.get(m.kind, 0) + 1
        _say(f"generated {len(data.messages)} messages: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        publish(settings, data.messages + identity_story(utc_now()))
    if not _has_cdnow(store):
        _say(f"publishing the CDNOW sample ({cdnow.TRANSACTIONS} purchases of {cdnow.CUSTOMERS} customers, 1997-98, "
             f"from the lifetimes package) as source {cdnow.SOURCE!r} ...")
        publish(settings, [DemoMessage(e["customer"]["id"].encode(), json.dumps(e).encode(), "valid")
                           for e in cdnow.envelopes()])

    stale = projector(settings, store).stale
    for name in stale:  # tables of an older Rapport: roll the new version out as an operator would
        _say(f"read model {name}: its tables were made by an older version; rebuilding it "
             f"(rapport projections rebuild {name})")
        print_report(rebuild(settings, store, name))

    with Processes() as processes:
        processes.start_all(["ingest"] * settings.ingest_processes + ["projector", "alerts", "api"])
        targets = end_offsets(settings)
        total = sum(targets.values())

        def ingested() -> int:
            positions = store.interactions.kafka_positions(settings.topic, targets)
            return sum(min(positions.get(p, -1) + 1, end) for p, end in targets.items())

        _wait("ingest (Kafka → event store)", total, ingested, processes)
        head = store.recorder.max_notification_id() or 0
        base = f"http://{settings.api_host}:{settings.api_port}"

        runner = projector(settings, store)

        def projected() -> int:  # the read model furthest behind
            return min(runner.positions().values())

        _wait(f"read models ({', '.join(runner.names)})", head, projected, processes)
        sample = (data.sample_customer_ids[0] if data else None) or _any_customer(store)
        _wait_for_api(base, processes)
        _KEY["key"] = _demo_key(settings)
        _fit_value_models(base)
        processes.start("value", "refresh", "--every", str(settings.value_refresh_seconds))
        _print_where_to_look(settings, store, base, sample)
        if not serve:
            return 0
        _say("Press Ctrl-C to stop.")
        return processes.wait()


def _has_cdnow(store: Any) -> bool:
    first = next(cdnow.envelopes())["event_id"]
    with store.factory.datastore.get_connection() as conn:
        return conn.execute(f"SELECT 1 FROM {tables.EVENT_IDS} WHERE event_id = %s", (first,)).fetchone() is not None  # noqa: S608 - names from constants


def _post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"X-API-Key": _KEY["key"], "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - our own localhost API
        return json.loads(response.read())


_MODELS: dict[str, Any] = {}  # the demo's two fits, for the lines it prints


def _fit_value_models(base: str) -> None:
    """The value model twice: on the CDNOW sample to the papers' calibration end (to compare with the
    published parameters), then on every USD purchase up to now (the one customers are scored with)."""
    _say("fitting the value model on the CDNOW sample (calibration end 1997-09-30), then on every USD purchase ...")
    _MODELS["cdnow"] = _post_json(f"{base}/value/model/fit", {"calibration_end": cdnow.CALIBRATION_END,
                                                             "currency": "USD", "source": cdnow.SOURCE})
    now = utc_now().replace(microsecond=0).isoformat().replace("+00:00", "Z")
    _MODELS["all"] = _post_json(f"{base}/value/model/fit", {"calibration_end": now, "currency": "USD"})


def _print_value(base: str) -> None:
    """The value lines: the CDNOW fit beside the published figures, segments, the dashboard."""
    if "cdnow" in _MODELS:
        fitted = {**_MODELS["cdnow"]["bgnbd"], **_MODELS["cdnow"]["gamma_gamma"]}
        worst = max(abs(fitted[k] - v) / v for k, v in cdnow.PUBLISHED.items())
        _say(f"  value model:  curl $K {base}/value/model   (CDNOW, to 1997-09-30: "
             + ", ".join(f"{k} {fitted[k]:.3f}" for k in cdnow.PUBLISHED)
             + "; Fader, Hardie & Lee published " + ", ".join(f"{k} {v}" for k, v in cdnow.PUBLISHED.items())
             + f": at most {worst:.2%} apart)")
        latest = _MODELS["all"]
        _say(f"                customers are scored with version {latest['version']}, fitted on {latest['customers']} "
             f"customers' {latest['purchases']} USD purchase days up to now; refit: .venv/bin/rapport value fit "
             "--calibration-end 2026-01-01 (or POST /value/model/fit)")
    segments = _get_json(f"{base}/segments")["segments"]
    _say(f"  segments:     curl $K {base}/segments   (" + ", ".join(f"{s['name']} {s['customers']}" for s in segments)
         + f"); members: curl $K {base}/segments/champions/customers")
    _say(f"  by cohort:    curl $K {base}/value/cohorts   distribution: curl $K {base}/value/distribution")


def _print_audit(base: str, sample: str, customer: str) -> None:
    """The audit lines: the customer as it was half a year ago, its hash chain, the verification."""
    then = (utc_now() - timedelta(days=182)).date().isoformat()
    try:
        past = _get_json(f"{customer}?as_of={then}")
        was = f"stage {past['lifecycle']['stage']}, {sum(past['interaction_counts'].values())} interactions then"
    except urllib.error.HTTPError:
        was = "not a customer yet then"
    verified = _get_json(f"{base}/audit/verify")
    quoted = urllib.parse.quote(sample)
    _say(f"  as it was:    curl $K '{customer}?as_of={then}'   ({was}); what we knew: ?known_at=…")
    _say(f"  its chain:    curl $K {base}/audit/customers/{quoted}/events   verify all: curl $K {base}/audit/verify   "
         f"({verified['events_checked']} events checked, "
         + ("every chain holds)" if verified["ok"] else f"{len(verified['broken'])} broken)"))
    _say(f"  evidence:     .venv/bin/rapport audit export {sample} --as-of {then} -o evidence.jsonl   "
         "heads to keep: .venv/bin/rapport audit heads -o heads.jsonl")
    now = utc_now().replace(microsecond=0).isoformat().replace("+00:00", "Z")
    _say(f"  replay:       .venv/bin/rapport replay all --known-at {now} --schema audit_demo   "
         "(the read models as known at that moment, beside the live ones)")


def _print_identity(base: str) -> None:
    """The identity lines: one person found by any of its identifiers, a household kept apart, an unmerge."""
    phone = urllib.parse.quote(PERSON["phone"].replace(" ", ""))
    try:
        person = _get_json(f"{base}/customers/lookup?phone={phone}")
        household = _get_json(f"{base}/customers/{HOUSEHOLD[1]}")
    except urllib.error.HTTPError:
        return  # the story was not published (an event store the demo did not fill)
    counts = person["interaction_counts"]
    _say(f"  one person:   curl $K '{base}/customers/lookup?phone={phone}'   ({person['customer_id']}: a call and a survey "
         f"by phone, an email, a purchase by account: {sum(counts.values())} interactions, identifiers "
         f"{', '.join(person['identity']['identifiers'])})")
    refused = household["identity"]["refused_links"]
    _say(f"  household:    curl $K {base}/customers/{HOUSEHOLD[1]}   ("
         + (f"{refused[0]['identifier']} stays {refused[0]['owner']}'s: {refused[0]['reason']})" if refused else "—)"))
    _say(f"  undo a merge: .venv/bin/rapport customers unmerge {person['customer_id']} --identifier "
         f"phone:{PERSON['phone'].replace(' ', '')}   (and `allow` to link them again; POST /customers/{{id}}/unmerge)")


def _print_where_to_look(settings: Settings, store: Any, base: str, sample: str) -> None:
    view = _get_json(f"{base}/customers/{urllib.parse.quote(sample)}")
    stages = _get_json(f"{base}/lifecycle/stages")["stages"]
    trend = _get_json(f"{base}/satisfaction/trend?kind=nps&granularity=month")["points"]
    alarms = _get_json(f"{base}/satisfaction/alarms?limit=500")["items"]
    with store.factory.datastore.get_connection() as conn:
        counts = conn.execute(
            f"SELECT (SELECT count(*) FROM {tables.EVENT_IDS}) AS events, "  # noqa: S608 - names from constants
            f"(SELECT count(*) FROM {tables.DEAD_LETTERS}) AS dead, "
            f"(SELECT count(*) FROM {customer_360.CUSTOMERS.name}) AS customers"
        ).fetchone()
    customer = f"{base}/customers/{urllib.parse.quote(sample)}"
    latest = trend[-1] if trend else None
    _say("")
    _say(f"Rapport is running: {counts['events']} events of {counts['customers']} customers stored, "
         f"{counts['dead']} messages dead-lettered to {settings.dead_letter_topic} (reasons in SQL table "
         f"{tables.DEAD_LETTERS}); duplicates ignored.")
    _say(f"  your key:     export RAPPORT_KEY={_KEY['key']}   (roles {', '.join(DEMO_ROLES)}; made now with "
         "`rapport keys create`, shown once; every route but /health needs one)")
    _say('                K="-H X-API-Key:$RAPPORT_KEY"   (the commands below send it with $K; '
         '`Authorization: Bearer` works too)')
    _say(f"  dashboard:    {base}/dashboard#key={_KEY['key']}   (open it in a browser: trends, funnel and flow, "
         "revenue by satisfaction, call-backs, alerts, value, segments, lag; the key stays in that tab)")
    _say(f"  a customer:   curl $K {customer}")
    _say(f"                (stage {view['lifecycle']['stage']} since {view['lifecycle']['since']}, "
         f"{sum(view['interaction_counts'].values())} interactions, segment {view['segment']}"
         + (f", alive with p {view['value']['p_alive']:.2f}, 12-month CLV "
            + " ".join(f"{c} {v}" for c, v in view["value"]["clv_12m"].items())
            if view["value"]["p_alive"] is not None else "") + ")")
    _say(f"  its history:  curl $K {customer}/lifecycle      its events: curl $K '{customer}/timeline?limit=20'")
    _say(f"  stages now:   curl $K {base}/lifecycle/stages   ({', '.join(f'{k} {v}' for k, v in stages.items())})")
    _say(f"  flow:         curl $K '{base}/lifecycle/flow?from=2026-01-01&to=2026-04-01'")
    _say(f"  NPS trend:    curl $K '{base}/satisfaction/trend?kind=nps&granularity=month'"
         + (f"   (NPS {latest['nps']} in {latest['period_start'][:7]}; by channel: &channel=phone)" if latest else ""))
    _say(f"  call back:    curl $K {base}/satisfaction/alarms   ({len(alarms)}{'+' if len(alarms) == 500 else ''} "
         "customers whose latest answer is an alarm, last 30 days)")
    _say(f"  revenue:      curl $K {base}/satisfaction/revenue-by-category")
    _say(f"  alerts:       curl $K {base}/alerts   ({len(_get_json(f'{base}/alerts?limit=500')['items'])} raised in the last "
         f"30 days, each also once on Kafka topic {settings.alert_topic} for read_committed consumers; "
         "older changes raise none)")
    _print_value(base)
    _print_audit(base, sample, customer)
    _print_identity(base)
    _say(f"  privacy:      names, emails, phones and free text are stored sealed under a key per customer; forget one: "
         f".venv/bin/rapport customers forget {sample} --reason 'request #1'   (or POST /customers/{{id}}/forget with "
         "an admin key: rapport keys create --name you --role admin)")
    _say(f"  contract:     curl $K {base}/schema/envelope.json   (JSON Schema of an event; AsyncAPI: contract/asyncapi.yaml)")
    _say(f"  the API:      {base}/docs  (OpenAPI; JSON at {base}/openapi.json)")
    _say(f"  progress:     curl $K {base}/projections   metrics: curl $K {base}/metrics   health: curl {base}/health (no key)")
    _say(f"  SQL:          psql '{settings.psql_url}' -c 'select * from analytics.satisfaction_daily limit 5'")  # noqa: S608 - a message to print, not SQL
    _say("                (views in schema analytics: \\dv analytics.*; queries in the README)")
    _say(f"  processes:    {settings.ingest_processes} × rapport ingest (RAPPORT_INGEST_PROCESSES), rapport projector, "
         f"rapport api × {settings.api_workers} workers (RAPPORT_API_WORKERS), rapport alerts, rapport value refresh "
         f"(every {settings.value_refresh_seconds} s)")
    _say("  speed:        bench/run --quick   (ingest, freshness, read models, lookups; README, Performance)")


def _wait_for_api(base: str, processes: Processes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get_json(f"{base}/health")
            return
        except OSError:
            if processes.stopping:
                raise KeyboardInterrupt from None
            processes.check()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _any_customer(store: Any) -> str:
    with store.factory.datastore.get_connection() as conn:
        row = conn.execute(f"SELECT customer_id FROM {customer_360.CUSTOMERS.name} "  # noqa: S608 - names from constants
                           "ORDER BY call_count + email_count DESC LIMIT 1").fetchone()
    return str(row["customer_id"]) if row else "unknown"
