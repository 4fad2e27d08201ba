"""A realistic, deterministic demo data set of Kafka messages for the `interactions` topic.

Pure Python, no I/O: `generate_demo_data()` returns the messages (key and value bytes) in the
order a publisher should send them, with out-of-order and late events, duplicates, conflicts and
invalid messages mixed in, as contract v1 section 1 describes them. One phone system (`pbx-02`)
sends its calls of the last 90 days in call data version 2 (`"version": 2`, `duration_ms`), as a
producer does after upgrading.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate

from domain.contract import EVENT_TYPES, call_data_v1_to_v2

__all__ = ["DemoMessage", "DemoDataSet", "generate_demo_data"]

DAY = 86_400
HOUR = 3_600
CALL, EMAIL, PURCHASE, SURVEY = 0, 1, 2, 3
TYPE_NAMES = EVENT_TYPES
FORCE_PROMOTER = 1
INVALID_FLAG = 100
_EPOCH = datetime(1970, 1, 1)  # noqa: DTZ001 - naive on purpose: compared with naive local times only


@dataclass(frozen=True, slots=True)
class DemoMessage:
    """One Kafka message: key and value bytes, and what the generator meant it to be."""

    key: bytes | None
    value: bytes
    kind: str  # "valid" | "duplicate" | "invalid" | "conflict"


@dataclass(frozen=True, slots=True)
class DemoDataSet:
    """The messages in publish order and what the event store must end up holding."""

    messages: list[DemoMessage]
    customers: int
    valid_events: int
    sample_customer_ids: list[str]


# --- reference data -------------------------------------------------------------------------

_COUNTRIES = (  # code, weight, utc offset (minutes), currencies with weights
    ("US", 55, -300, (("USD", 1.0),)),
    ("UK", 17, 0, (("GBP", 0.7), ("USD", 0.3))),
    ("LK", 18, 330, (("LKR", 0.45), ("USD", 0.55))),
    ("EU", 10, 60, (("EUR", 0.85), ("USD", 0.15))),
)
_LK_FIRST = ("Ana", "Kasun", "Nimali", "Ruwan", "Dilani", "Tharindu", "Sanduni", "Chamara",
             "Ishara", "Nuwan", "Hiruni", "Dinesh")
_LK_LAST = ("Perera", "Fernando", "Silva", "Jayasinghe", "Wickramasinghe", "Bandara",
            "Dissanayake", "Gunawardena", "Ratnayake", "Herath")
_WEST_FIRST = ("James", "Emily", "Oliver", "Sophie", "Harry", "Charlotte", "Michael", "Jessica",
               "David", "Sarah", "Daniel", "Laura", "Lukas", "Mia", "Sofia", "Mateo", "Priya",
               "Arjun", "Chloe", "Noah", "Grace", "Ethan", "Amara", "Leon")
_WEST_LAST = ("Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Miller",
              "Davis", "Garcia", "Martinez", "Schmidt", "Rossi", "Dubois", "Patel", "Khan",
              "Nguyen", "Kim", "O'Brien", "Walker", "Clarke", "Evans", "Becker", "Moreau")
_AGENTS = ("kasun", "nimali", "ruwan", "dilani", "tharindu", "emma", "jack", "olivia", "liam",
           "maria", "sam", "priya")
_TOPICS = ("billing", "delivery", "returns", "product_question", "account", "warranty",
           "complaint", "order_change")
_INBOUND_SUBJECTS = ("Question about my invoice", "Return request", "Damaged item received",
                     "How do I change my delivery address?", "Refund status",
                     "Product question", "Cancel my subscription", "Thank you!",
                     "Wrong size delivered", "Login problem")
_CAMPAIGNS = (("newsletter", "Our {month} newsletter"), ("spring-sale", "Spring sale: 20% off"),
              ("summer-sale", "Summer deals are here"), ("black-friday", "Black Friday starts now"),
              ("holiday-gifts", "Gift ideas for everyone"), ("winback", "We miss you: 15% off"),
              ("new-arrivals", "New arrivals you will love"))
_COMMENTS = (
    ("Very disappointed, nobody solved my problem.", "Delivery was two weeks late.",
     "Support kept me on hold forever.", "The product broke after a week.",
     "Too expensive for what you get."),
    ("It was fine.", "Okay, but delivery could be faster.", "Decent service.",
     "Good product, the website is confusing."),
    ("Great service, thank you!", "Fast delivery and friendly staff.", "Love the quality.",
     "Kasun on the phone was really helpful.", "Will definitely buy again."),
)
# The phone system upgraded to call data version 2 this many days before `now`.
_V2_CALL_SOURCE = "pbx-02"
_V2_CALLS_DAYS = 90
_FX = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "LKR": 300.0}
_OTHER_CURRENCY = {"USD": "EUR", "EUR": "USD", "GBP": "USD", "LKR": "USD"}

_INVALID_VARIANTS = (
    ("not_json_truncated", None), ("not_json_garbage", None), ("json_list", None),
    ("json_number", None), ("missing_event_id", None), ("empty_event_id", None),
    ("long_event_id", None), ("unknown_type", None), ("missing_occurred_at", None),
    ("naive_occurred_at", None), ("garbled_occurred_at", None), ("missing_customer", None),
    ("customer_without_identifier", None), ("missing_data", None),
    ("call_direction_sideways", CALL), ("call_negative_duration", CALL),
    ("purchase_negative_amount", PURCHASE), ("purchase_non_numeric_amount", PURCHASE),
    ("purchase_currency_US", PURCHASE), ("purchase_currency_usd1", PURCHASE),
    ("purchase_item_quantity_zero", PURCHASE), ("survey_nps_11", SURVEY),
    ("survey_csat_0", SURVEY), ("survey_kind_ces", SURVEY), ("survey_fractional_score", SURVEY),
)

# persona: (type weights call/email/purchase/survey, mood range)
_PERSONAS = {
    "regular": ((30, 35, 21, 14), (0.62, 0.90)),
    "advocate": ((24, 33, 26, 17), (0.88, 0.98)),
    "detractor": ((40, 30, 15, 15), (0.10, 0.35)),
    "at_risk": ((30, 40, 15, 15), (0.45, 0.70)),
    "churned": ((30, 35, 20, 15), (0.30, 0.70)),
    "new": ((25, 40, 22, 13), (0.60, 0.90)),
    "prospect": ((32, 52, 0, 16), (0.50, 0.80)),
}


def _cents(c: int) -> str:
    sign = "-" if c < 0 else ""
    c = abs(c)
    return f"{sign}{c // 100}.{c % 100:02d}"


def _between(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(min(lo, hi), hi)


class _Customer:
    __slots__ = ("idx", "id", "email", "phone", "name", "key", "key_bytes", "country", "offset",
                 "currency", "mood", "persona", "start", "end", "favorites", "mask",
                 "last_call", "last_purchase")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.mask = 0
        self.last_call: tuple[str, int] | None = None
        self.last_purchase: tuple[str, int, str] | None = None


class _Generator:
    def __init__(self, customers: int, events: int, months: float, now: datetime, seed: int,
                 duplicate_rate: float, invalid_rate: float, conflict_rate: float) -> None:
        self.rng = random.Random(seed)
        self.n_customers = customers
        self.n_events = events
        self.now = int(now.timestamp())
        self.window = max(int(months * 365.25 / 12 * DAY), DAY)
        self.begin = self.now - self.window
        self.n_dup = round(events * duplicate_rate)
        self.n_conflict = min(round(events * conflict_rate), events - min(self.n_dup, events))
        self.n_dup = min(self.n_dup, events)
        self.n_invalid = round(events * invalid_rate)
        self.counters = {"pbx-01": 401_000, "pbx-02": 702_000, "shop": 100_000,
                         "survey-tool": 50_000}
        dip_start = self.now - int(self.window * 0.42)
        self.dip = (dip_start, dip_start + 42 * DAY)  # a delivery crisis: scores drop for weeks
        skus = 150
        self.sku_prices = [int(round(max(2.99, rng_price) * 100)) // 100 * 100 + 99
                           for rng_price in (self.rng.lognormvariate(3.1, 0.9) for _ in range(skus))]
        self.sku_cum = list(accumulate(1.0 / (i + 1) ** 0.8 for i in range(skus)))
        self.out: list[tuple[float, int, bytes | None, bytes, str]] = []

    # --- customers and their plans -----------------------------------------------------------

    def make_customers(self) -> list[_Customer]:
        rng = self.rng
        weights = [c[1] for c in _COUNTRIES]
        result = []
        for i in range(self.n_customers):
            c = _Customer(i)
            code, _, offset, currencies = rng.choices(_COUNTRIES, weights)[0]
            firsts, lasts = (_LK_FIRST, _LK_LAST) if code == "LK" else (_WEST_FIRST, _WEST_LAST)
            first, last = rng.choice(firsts), rng.choice(lasts)
            num = i + 1
            c.name = f"{first} {last}"
            local = "".join(ch for ch in f"{first}.{last}".lower() if ch.isalpha() or ch == ".")
            c.email = f"{local}{num}@example.com"
            c.country, c.offset = code, offset
            c.currency = rng.choices([x[0] for x in currencies], [x[1] for x in currencies])[0]
            serial = (num * 7919 + 1_234_567) % 10_000_000
            c.phone = {"US": f"+1{212 + num % 700}{serial:07d}", "UK": f"+4479{serial:08d}",
                       "LK": f"+9477{serial:07d}", "EU": f"+49151{serial:08d}"}[code]
            if rng.random() < 0.05:  # known only by email
                c.id, c.phone, c.key = None, None, c.email
            else:
                c.id = f"crm-{num:06d}"
                c.key = c.id
                if rng.random() < 0.2:
                    c.phone = None
            c.key_bytes = c.key.encode()
            c.favorites = rng.sample(range(len(self.sku_prices)), rng.randint(3, 6))
            result.append(c)
        return result

    def event_counts(self) -> list[int]:
        rng = self.rng
        n = self.n_customers
        cum = list(accumulate(rng.lognormvariate(0.0, 1.15) for _ in range(n)))
        counts = [1] * n
        for i in rng.choices(range(n), cum_weights=cum, k=self.n_events - n):
            counts[i] += 1
        return counts

    def choose_persona(self, count: int) -> str:
        r = self.rng.random()
        table = ((("advocate", 0.18), ("detractor", 0.08), ("at_risk", 0.12), ("churned", 0.08))
                 if count >= 5 else
                 (("churned", 0.15), ("at_risk", 0.10), ("prospect", 0.20), ("detractor", 0.07),
                  ("new", 0.10)) if count >= 2 else
                 (("churned", 0.20), ("prospect", 0.40), ("new", 0.10)))
        for name, p in table:  # noqa: B007 - `name` is the choice once the loop breaks
            if r < p:
                break
            r -= p
        else:
            name = "regular"
        if name == "churned" and self.window < 400 * DAY:
            name = "regular"
        if name == "at_risk" and self.window < 240 * DAY:
            name = "regular"
        return name

    def plan_customer(self, c: _Customer, count: int, plan: list[tuple[int, int, int, int]]) -> None:
        rng, now, begin = self.rng, self.now, self.begin
        c.persona = persona = self.choose_persona(count)
        weights, (m_lo, m_hi) = _PERSONAS[persona]
        c.mood = rng.uniform(m_lo, m_hi)
        recent = now - int(min(rng.expovariate(1 / (15 * DAY)), 60 * DAY)) - rng.randint(60, HOUR)
        cutoff = None
        if persona == "churned":
            end = now - rng.randint(370 * DAY, 370 * DAY + min(200 * DAY, self.window - 400 * DAY))
        elif persona == "regular" and rng.random() < 0.2:
            end = now - _between(rng, 30 * DAY, min(250 * DAY, self.window))
        else:
            end = recent
        end = max(end, begin + HOUR)
        if persona == "new":
            start = now - _between(rng, 10 * DAY, min(90 * DAY, self.window))
        elif rng.random() < 0.4 or persona == "advocate":
            start = begin + rng.randint(0, min(20 * DAY, self.window // 4))
        else:
            start = rng.randint(begin, max(begin, end - 14 * DAY))
        if persona == "at_risk":
            cutoff = now - rng.randint(190 * DAY, min(300 * DAY, self.window - 30 * DAY))
            start = min(start, rng.randint(begin, cutoff - 20 * DAY))
        start = min(start, end - HOUR)
        c.start, c.end = start, end

        types = rng.choices((CALL, EMAIL, PURCHASE, SURVEY), weights, k=count)
        if persona == "advocate":
            while types.count(PURCHASE) < 2:
                types[types.index(next(t for t in types if t != PURCHASE))] = PURCHASE
        elif persona == "at_risk" and PURCHASE not in types:
            types[0] = PURCHASE
        times = [self.time_in(start, cutoff if (t == PURCHASE and cutoff) else end, c.offset, t)
                 for t in types]
        last = next((i for i, t in enumerate(types) if not (cutoff and t == PURCHASE)), None)
        if last is not None and count > 1:
            times[last] = end  # the last contact is the end of the active period
        keeps_buying = persona in ("regular", "new", "detractor") and rng.random() < 0.85
        if PURCHASE in types and (persona == "advocate" or (keeps_buying and end > now - 60 * DAY)):
            i = types.index(PURCHASE)
            times[i] = self.time_in(max(start, now - 120 * DAY), end, c.offset, PURCHASE)
        order = sorted(range(count), key=times.__getitem__)
        flags = [0] * count
        if persona == "advocate":
            surveys = [i for i in order if types[i] == SURVEY]
            if not surveys:
                spare = [i for i in order if types[i] != PURCHASE] or \
                        [i for i in order if types[i] == PURCHASE][:1]
                surveys = [spare[-1]]
                types[surveys[0]] = SURVEY
            flags[surveys[-1]] = FORCE_PROMOTER
        for i in order:
            c.mask |= 1 << types[i]
            plan.append((times[i], c.idx, types[i], flags[i]))

    def time_in(self, a: int, b: int, offset_min: int, kind: int) -> int:
        """A moment in [a, b], at a plausible local time of day for the kind of event."""
        rng = self.rng
        if b <= a:
            return a
        u = rng.randint(a, b)
        if b - a < 2 * DAY:
            return u
        off = offset_min * 60
        local = u + off
        mu, sd = ((14.0, 2.5) if kind == CALL else (13.0, 4.0) if kind == EMAIL
                  else (15.0, 4.0))
        sod = min(max(rng.gauss(mu, sd), 7.0), 22.5)
        t = local - local % DAY + int(sod * HOUR) - off
        return t if a <= t <= b else u

    # --- envelopes ---------------------------------------------------------------------------

    def next_id(self, source: str) -> int:
        self.counters[source] += 1 + (self.rng.random() < 0.3)
        return self.counters[source]

    def fmt(self, t: int, style: str, offset_min: int = 0) -> str:
        """RFC 3339: style "Z", "+00:00", "local" (offset_min) or "ms" (Z with milliseconds)."""
        off = offset_min if style == "local" else 0
        d = _EPOCH + timedelta(seconds=t + off * 60)
        s = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        if style == "ms":
            return f"{s}.{self.rng.randrange(1000):03d}Z"
        if style == "Z" or (style == "local" and off == 0 and self.rng.random() < 0.5):
            return s + "Z"
        sign = "-" if off < 0 else "+"
        return f"{s}{sign}{abs(off) // 60:02d}:{abs(off) % 60:02d}"

    def customer_ref(self, c: _Customer, kind: int) -> dict[str, str]:
        rng = self.rng
        if c.id is None:
            ref = {"email": c.email}
            if rng.random() < 0.5:
                ref["name"] = c.name
            return ref
        p_email, p_phone, p_name = ((0.2, 0.85, 0.5), (0.95, 0.05, 0.5), (0.7, 0.3, 0.8),
                                    (0.5, 0.0, 0.2))[kind]
        ref = {"id": c.id}
        if rng.random() < p_email:
            ref["email"] = c.email
        if c.phone and rng.random() < p_phone:
            ref["phone"] = c.phone
        if rng.random() < p_name:
            ref["name"] = c.name
        return ref

    def mood_at(self, c: _Customer, t: int) -> float:
        trend = 0.06 * (t - self.begin) / self.window - 0.03
        dip = -0.25 if self.dip[0] <= t < self.dip[1] else 0.0
        return c.mood + trend + dip

    def build(self, c: _Customer, t: int, kind: int, flag: int) -> dict:
        rng = self.rng
        version = None
        if kind == CALL:
            source = "pbx-01" if rng.random() < (0.8 if c.country == "LK" else 0.1) else _V2_CALL_SOURCE
            number = self.next_id(source)
            event_id = f"{source}:call:{number}"
            occurred = self.fmt(t, "local" if source == "pbx-01" else "Z", 330)
            data = self.call_data(c, t)
            if source == _V2_CALL_SOURCE and t >= self.now - _V2_CALLS_DAYS * DAY:
                version = 2
                data = call_data_in_ms(data, number)
        elif kind == EMAIL:
            source = "mail-gw"
            event_id = f"mail-gw:email:{uuid.UUID(int=rng.getrandbits(128), version=4).hex}"
            occurred = self.fmt(t, "+00:00")
            data = self.email_data(c, t)
        elif kind == PURCHASE:
            source = "shop"
            number = self.next_id("shop")
            event_id = f"shop:order:{number}"
            data = self.purchase_data(c, number)
            occurred = self.fmt(t, "local" if data["channel"] == "store" else "ms", c.offset)
        else:
            source = "survey-tool"
            event_id = f"survey-tool:resp:{self.next_id('survey-tool')}"
            occurred = self.fmt(t, "Z")
            data = self.survey_data(c, t, flag == FORCE_PROMOTER)
        env = {"event_id": event_id, "type": TYPE_NAMES[kind], "occurred_at": occurred,
               "customer": self.customer_ref(c, kind), "source": source}
        if source == "survey-tool":
            version = 1
        if version is not None:
            env["version"] = version
        env["data"] = data
        if rng.random() < 0.004:
            env[rng.choice(("trace_id", "correlation_id"))] = uuid.UUID(
                int=rng.getrandbits(128), version=4).hex
        return env

    def call_data(self, c: _Customer, t: int) -> dict:
        rng = self.rng
        inbound = rng.random() < 0.7
        sad = c.mood < 0.4
        if inbound:
            outcome = rng.choices(("resolved", "unresolved", "voicemail", "no_answer"),
                                  (55, 40, 2, 3) if sad else (75, 17, 3, 5))[0]
        else:
            outcome = rng.choices(("resolved", "unresolved", "voicemail", "no_answer"),
                                  (40, 10, 25, 25))[0]
        if outcome == "no_answer":
            duration = 0
        elif outcome == "voicemail":
            duration = rng.randint(10, 90)
        else:
            duration = min(3600, max(20, int(rng.lognormvariate(5.5, 0.8))))
        data: dict = {"direction": "inbound" if inbound else "outbound",
                      "duration_seconds": duration}
        if rng.random() < 0.95:
            data["outcome"] = outcome
        if outcome != "no_answer":
            data["agent"] = rng.choice(_AGENTS)
        if rng.random() < 0.85:
            in_dip = self.dip[0] <= t < self.dip[1]
            data["topic"] = ("delivery" if in_dip and rng.random() < 0.5 else
                             "complaint" if sad and rng.random() < 0.3 else rng.choice(_TOPICS))
        return data

    def email_data(self, c: _Customer, t: int) -> dict:
        rng = self.rng
        if rng.random() < 0.35:
            if c.last_purchase and rng.random() < 0.3:
                subject = f"Where is my order {c.last_purchase[2]}?"
            else:
                subject = rng.choice(_INBOUND_SUBJECTS)
            return {"direction": "inbound", "subject": subject}
        data: dict = {"direction": "outbound"}
        d = _EPOCH + timedelta(seconds=t)
        if rng.random() < 0.55:
            name, subject = rng.choice(_CAMPAIGNS)
            data["subject"] = subject.format(month=d.strftime("%B"))
            data["campaign"] = f"{name}-{d.year}-{d.month:02d}"
        elif c.last_purchase and rng.random() < 0.7:
            data["subject"] = rng.choice(("Your order {} has shipped", "Receipt for order {}",
                                          "Your order {} was delivered")).format(c.last_purchase[2])
        elif rng.random() < 0.9:
            data["subject"] = rng.choice(("Password reset", "Welcome to our store",
                                          "Your account details were updated"))
        return data

    def purchase_data(self, c: _Customer, number: int) -> dict:
        rng = self.rng
        currency = c.currency if rng.random() < 0.96 else _OTHER_CURRENCY[c.currency]
        rate = _FX[currency]
        lines = rng.choices((1, 2, 3, 4), (55, 25, 15, 5))[0]
        skus: set[int] = set()
        while len(skus) < lines:
            skus.add(rng.choice(c.favorites) if rng.random() < 0.5 else
                     rng.choices(range(len(self.sku_prices)), cum_weights=self.sku_cum)[0])
        items, total = [], 0
        for sku in sorted(skus):
            cents = self.sku_prices[sku]
            if currency == "LKR":
                cents = max(5_000, round(cents * rate / 5_000) * 5_000)
            elif currency != "USD":
                cents = max(99, round(cents * rate / 100) * 100 - 1)
            qty = rng.choices((1, 2, 3, 4, 5), (75, 17, 4, 2, 2))[0]
            total += qty * cents
            items.append({"sku": f"sku-{sku + 1:04d}", "quantity": qty, "unit_price": _cents(cents)})
        channel = rng.choices(("web", "store", "phone"), (65, 25, 10))[0]
        return {"order_id": f"ord-{number}", "amount": _cents(total), "currency": currency,
                "items": items, "channel": channel}

    def survey_data(self, c: _Customer, t: int, promoter: bool) -> dict:
        rng = self.rng
        about = None
        if promoter:
            kind, survey_id = "nps", self.quarterly(t)
        elif c.last_call and t - c.last_call[1] < 3 * DAY and rng.random() < 0.7:
            kind, survey_id, about = "csat", "csat-support", c.last_call[0]
        elif c.last_purchase and t - c.last_purchase[1] < 14 * DAY:
            kind, survey_id = rng.choice((("nps", "nps-post-purchase"), ("csat", "csat-delivery")))
            about = c.last_purchase[0]
        else:
            kind, survey_id = "nps", self.quarterly(t)
        mood = self.mood_at(c, t)
        if kind == "nps":
            score = (rng.choice((9, 10, 10)) if promoter else
                     min(10, max(0, round(rng.gauss(10 * mood + 0.3, 1.4)))))
            bucket = 0 if score <= 6 else 1 if score <= 8 else 2
        else:
            score = min(5, max(1, round(rng.gauss(1.2 + 4 * mood, 0.8))))
            bucket = 0 if score <= 2 else 1 if score == 3 else 2
        data: dict = {"kind": kind, "score": score, "survey_id": survey_id}
        if about and rng.random() < 0.9:
            data["about_event_id"] = about
        if rng.random() < (0.5 if bucket == 0 else 0.25):
            data["comment"] = rng.choice(_COMMENTS[bucket])
        return data

    @staticmethod
    def quarterly(t: int) -> str:
        d = _EPOCH + timedelta(seconds=t)
        return f"nps-{d.year}-q{(d.month - 1) // 3 + 1}"

    # --- invalid messages --------------------------------------------------------------------

    def break_rule(self, variant: str, env: dict, c: _Customer) -> tuple[bytes | None, bytes]:
        rng = self.rng
        key: bytes | None = c.key_bytes
        data = env["data"]
        if variant == "not_json_truncated":
            text = json.dumps(env)
            return key, text[: rng.randint(1, len(text) - 1)].encode()
        if variant == "not_json_garbage":
            return None, rng.choice((b"\xff\xfe\x00\x01\x9c binary", b"<html><body>502 Bad Gateway"
                                     b"</body></html>", b"event_id=x&type=call", b"{'single': 'quotes'}"))
        if variant == "json_list":
            return None, json.dumps([env]).encode()
        if variant == "json_number":
            return None, rng.choice((b"42", b"3.14", b"-1"))
        if variant == "missing_event_id":
            del env["event_id"]
        elif variant == "empty_event_id":
            env["event_id"] = ""
        elif variant == "long_event_id":
            env["event_id"] = (env["event_id"] + ":" + "x" * 201)[:201]
        elif variant == "unknown_type":
            env["type"] = rng.choice(("sms", "chat", "visit"))
        elif variant == "missing_occurred_at":
            del env["occurred_at"]
        elif variant == "naive_occurred_at":
            env["occurred_at"] = env["occurred_at"][:19]
        elif variant == "garbled_occurred_at":
            year = env["occurred_at"][:4]
            env["occurred_at"] = rng.choice(("yesterday", f"{year}-02-30T10:15:00Z",
                                             f"{year}-13-01T10:15:00Z", f"01/03/{year} 10:15",
                                             f"{year}-03-01T25:61:00Z"))
        elif variant == "missing_customer":
            del env["customer"]
            key = None
        elif variant == "customer_without_identifier":
            env["customer"] = rng.choice(({"name": c.name}, {}))
            key = None
        elif variant == "missing_data":
            del env["data"]
        elif variant == "call_direction_sideways":
            data["direction"] = "sideways"
        elif variant == "call_negative_duration":
            field, unit = _duration_field(data)
            data[field] = -rng.randint(1, 600) * unit
        elif variant == "purchase_negative_amount":
            data["amount"] = "-" + data["amount"]
        elif variant == "purchase_non_numeric_amount":
            data["amount"] = rng.choice(("ten", "N/A", "12.50 USD"))
        elif variant == "purchase_currency_US":
            data["currency"] = "US"
        elif variant == "purchase_currency_usd1":
            data["currency"] = "usd1"
        elif variant == "purchase_item_quantity_zero":
            data["items"][0]["quantity"] = 0
            data["amount"] = _cents(sum(int(i["unit_price"].replace(".", "")) * i["quantity"]
                                        for i in data["items"]))
        elif variant == "survey_nps_11":
            data["kind"], data["score"] = "nps", 11
        elif variant == "survey_csat_0":
            data["kind"], data["score"] = "csat", 0
        elif variant == "survey_kind_ces":
            data["kind"], data["score"] = "ces", rng.randint(1, 7)
        elif variant == "survey_fractional_score":
            data["kind"], data["score"] = "nps", 7.5
        return key, json.dumps(env, separators=(",", ":")).encode()

    # --- the stream --------------------------------------------------------------------------

    def run(self) -> DemoDataSet:
        rng = self.rng
        custs = self.make_customers()
        plan: list[tuple[int, int, int, int]] = []
        for c, count in zip(custs, self.event_counts(), strict=False):
            self.plan_customer(c, count, plan)
        variants = [i % len(_INVALID_VARIANTS) for i in range(self.n_invalid)]
        rng.shuffle(variants)
        for v in variants:
            c = custs[rng.randrange(len(custs))]
            kind = _INVALID_VARIANTS[v][1]
            kind = rng.randrange(4) if kind is None else kind
            plan.append((rng.randint(c.start, c.end), c.idx, kind, INVALID_FLAG + v))
        plan.sort()

        picked = rng.sample(range(self.n_events), self.n_dup + self.n_conflict)
        dup_set, conflict_set = set(picked[: self.n_dup]), set(picked[self.n_dup:])
        kept: list[tuple[dict, bytes, bytes, float, str]] = []
        out = self.out
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        valid_index = 0
        for t, ci, kind, flag in plan:
            c = custs[ci]
            env = self.build(c, t, kind, flag)
            pkey = t + rng.random() * 6 * HOUR
            if flag >= INVALID_FLAG:
                key, value = self.break_rule(_INVALID_VARIANTS[flag - INVALID_FLAG][0], env, c)
                out.append((pkey, len(out), key, value, "invalid"))
                continue
            if kind == CALL and env["data"]["direction"] == "inbound":
                c.last_call = (env["event_id"], t)
            elif kind == PURCHASE:
                c.last_purchase = (env["event_id"], t, env["data"]["order_id"])
            if rng.random() < 0.02:  # a late arrival, weeks after it happened
                pkey += rng.uniform(7, 56) * DAY
            value = dumps(env).encode()
            out.append((pkey, len(out), c.key_bytes, value, "valid"))
            if valid_index in dup_set:
                kept.append((env, c.key_bytes, value, pkey, "duplicate"))
            elif valid_index in conflict_set:
                kept.append((env, c.key_bytes, value, pkey, "conflict"))
            valid_index += 1
        del plan
        for env, key, value, pkey, what in kept:
            if what == "duplicate":
                later = (rng.uniform(60, 3 * DAY) if rng.random() < 0.8 else
                         rng.uniform(7 * DAY, 60 * DAY))
                if rng.random() < 0.4:
                    value = reserialized(env, rng)
                out.append((pkey + later, len(out), key, value, "duplicate"))
            else:
                changed = self.conflicting(env)
                out.append((pkey + rng.uniform(HOUR, 30 * DAY), len(out), key,
                            dumps(changed).encode(), "conflict"))
        out.sort()
        messages = [DemoMessage(key, value, kind) for _, _, key, value, kind in out]
        out.clear()
        return DemoDataSet(messages, len(custs), self.n_events, self.samples(custs))

    def conflicting(self, env: dict) -> dict:
        """The same event_id with different content, still valid on its own."""
        rng = self.rng
        changed = json.loads(json.dumps(env))
        data = changed["data"]
        kind = changed["type"]
        if kind == "call":
            field, unit = _duration_field(data)
            data[field] += rng.randint(5, 300) * unit
        elif kind == "email":
            data["subject"] = "RE: " + data.get("subject", "(no subject)")
        elif kind == "purchase":
            item = data["items"][0]
            item["quantity"] += 1
            total = sum(int(i["unit_price"].replace(".", "")) * i["quantity"] for i in data["items"])
            data["amount"] = _cents(total)
        else:
            top = 10 if data["kind"] == "nps" else 5
            data["score"] = data["score"] - 1 if data["score"] == top else data["score"] + 1
        return changed

    def samples(self, custs: list[_Customer]) -> list[str]:
        chosen: list[str] = []
        for persona in ("advocate", "at_risk", "churned", "regular", "detractor", "new"):
            for c in custs:
                if c.persona == persona and c.mask == 0b1111 and c.id and c.id not in chosen:
                    chosen.append(c.id)
                    break
        for c in custs:
            if len(chosen) >= 5:
                break
            if c.mask == 0b1111 and c.id and c.id not in chosen:
                chosen.append(c.id)
        return chosen[:5]


def call_data_in_ms(data: dict, number: int) -> dict:
    """Call data of version 2, as the upgraded phone system sends it: it measures the part of a
    second too (taken from the call's number, so that no random draw moves)."""
    upgraded = call_data_v1_to_v2(data)
    if upgraded["duration_ms"]:
        upgraded["duration_ms"] += number * 37 % 1000
    return upgraded


def _duration_field(data: dict) -> tuple[str, int]:
    """The name of a call's duration and its units per second: version 2's or version 1's."""
    return ("duration_ms", 1000) if "duration_ms" in data else ("duration_seconds", 1)


def reserialized(env: dict, rng: random.Random) -> bytes:
    """The same content with a different key order and whitespace."""
    def reorder(value):
        if isinstance(value, dict):
            return {k: reorder(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reorder(v) for v in value]
        return value
    indent = rng.choice((None, 2))
    return json.dumps(reorder(env), indent=indent, ensure_ascii=rng.random() < 0.5).encode()


def generate_demo_data(customers: int = 2000, events: int = 50_000, months: int = 18,
                       now: datetime | None = None, seed: int = 7,
                       duplicate_rate: float = 0.01, invalid_rate: float = 0.005,
                       conflict_rate: float = 0.001) -> DemoDataSet:
    """Generate a deterministic (for a seed and `now`) demo stream of customer interactions.

    `events` valid distinct events for `customers` customers over the last `months` months
    before `now` (default: the current time, UTC); duplicates, conflicts and invalid messages
    are added on top at the given rates of `events`.
    """
    if customers < 1 or events < customers:
        raise ValueError("need at least one customer and at least one event per customer")
    if months <= 0:
        raise ValueError("months must be positive")
    for rate in (duplicate_rate, invalid_rate, conflict_rate):
        if not 0 <= rate <= 1:
            raise ValueError("rates must be between 0 and 1")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    now = now.astimezone(UTC).replace(microsecond=0)
    return _Generator(customers, events, months, now, seed,
                      duplicate_rate, invalid_rate, conflict_rate).run()
