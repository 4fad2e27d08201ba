"""Identity resolution's pure rules (domain/identity.py): normal forms, and which identifiers are
one customer, whatever the arrival order."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.identity import (
    Identifier,
    Link,
    Separation,
    UnreadableIdentifier,
    decide,
    generated_id,
    identifiers_of,
    links_of,
    normal_email,
    normal_phone,
    resolve,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
ID, ID2 = Identifier("id", "crm-1"), Identifier("id", "crm-2")
EMAIL, PHONE = Identifier("email", "ana@example.com"), Identifier("phone", "+94771234567")


def event(minutes: int, event_id: str, *identifiers: Identifier) -> list[Link]:
    return links_of(identifiers, T0 + timedelta(minutes=minutes), event_id)


# -- normal forms --------------------------------------------------------------------------------
def test_emails_are_trimmed_and_lower_cased() -> None:
    assert normal_email("  Ana.Perera@Example.COM ") == "ana.perera@example.com"


@pytest.mark.parametrize("raw", ["ana", "ana@", "@example.com", "ana@localhost", "ana perera@example.com"])
def test_an_unreadable_email_names_the_field_and_the_fix(raw: str) -> None:
    with pytest.raises(UnreadableIdentifier) as error:
        normal_email(raw)
    assert "customer.email" in error.value.reason and "name@domain.tld" in error.value.reason


@pytest.mark.parametrize(("raw", "region", "e164"), [
    ("+94771234567", "US", "+94771234567"),
    ("+94 77 123 4567", "US", "+94771234567"),
    ("077 123 4567", "LK", "+94771234567"),  # national form, read in the default region
    ("(212) 555-0123", "US", "+12125550123"),
    ("00 44 7911 123456", "GB", "+447911123456"),
])
def test_phones_are_read_to_e164(raw: str, region: str, e164: str) -> None:
    assert normal_phone(raw, region) == e164


@pytest.mark.parametrize("raw", ["call me", "12", "+94 77 123 4567 8901 2345"])
def test_an_unreadable_phone_names_the_field_and_the_fix(raw: str) -> None:
    with pytest.raises(UnreadableIdentifier) as error:
        normal_phone(raw, "LK")
    assert "customer.phone" in error.value.reason and "+94771234567" in error.value.reason


def test_the_anchor_comes_first_as_the_contract_key() -> None:
    assert identifiers_of({"phone": "+94 77 123 4567", "email": "Ana@Example.com", "name": "Ana"}) == (EMAIL, PHONE)
    assert identifiers_of({"id": "crm-1", "phone": "+94771234567"})[0] == ID


def test_identifier_text_round_trips() -> None:
    assert Identifier.parse("email: ANA@example.com".replace(" ", "")) == EMAIL
    assert str(PHONE) == "phone:+94771234567"
    with pytest.raises(UnreadableIdentifier, match="id:VALUE"):
        Identifier.parse("fax:123")


# -- resolution ----------------------------------------------------------------------------------
def test_phone_then_email_then_account_is_one_customer_in_every_arrival_order() -> None:
    events = [event(0, "pbx:1", PHONE),                 # a call from a phone
              event(10, "mail:1", EMAIL, PHONE),         # an email signed with the phone
              event(20, "shop:1", ID, EMAIL)]            # a purchase by account, with the email
    for order in itertools.permutations(events):
        resolution = resolve(link for links in order for link in links)
        assert resolution.members == {"crm-1": [ID, EMAIL, PHONE]}
        assert resolution.refusals == []


def test_without_an_account_the_id_is_generated_from_the_earliest_identifier() -> None:
    resolution = resolve(event(5, "b", EMAIL) + event(0, "a", PHONE) + event(9, "c", EMAIL, PHONE))
    assert resolution.customer_of[EMAIL] == resolution.customer_of[PHONE] == generated_id(PHONE)
    assert generated_id(PHONE).startswith("rc-") and "94771234567" not in generated_id(PHONE)


def test_two_account_ids_are_never_merged_the_email_stays_with_the_first_in_event_time() -> None:
    household = event(0, "shop:1", ID, EMAIL) + event(30, "shop:2", ID2, EMAIL)
    for order in (household, household[::-1]):
        resolution = resolve(order)
        assert resolution.members == {"crm-1": [ID, EMAIL], "crm-2": [ID2]}
        assert [(r.link.event_id, r.reason) for r in resolution.refusals_of("crm-2")] == [("shop:2", "two ids")]
        assert resolution.refusals_of("crm-1") == []


def test_a_late_event_earlier_in_event_time_moves_the_email_to_its_account() -> None:
    arrived = event(30, "shop:2", ID2, EMAIL)
    assert resolve(arrived).customer_of[EMAIL] == "crm-2"
    assert resolve(arrived + event(0, "shop:1", ID, EMAIL)).customer_of[EMAIL] == "crm-1"


def test_an_id_less_link_between_two_accounts_is_refused() -> None:
    links = event(0, "a", ID, EMAIL) + event(1, "b", ID2, PHONE) + event(2, "c", EMAIL, PHONE)
    resolution = resolve(links)
    assert resolution.members == {"crm-1": [ID, EMAIL], "crm-2": [ID2, PHONE]}
    assert [r.link.event_id for r in resolution.refusals] == ["c"]


def test_an_operator_separation_splits_and_keeps_later_links_out() -> None:
    links = event(0, "a", ID, EMAIL) + event(5, "b", EMAIL, PHONE)
    assert resolve(links).members == {"crm-1": [ID, EMAIL, PHONE]}
    apart = [Separation.of(EMAIL, ID)]
    split = resolve(links, apart)
    assert split.members == {"crm-1": [ID], generated_id(EMAIL): [EMAIL, PHONE]}
    later = resolve(links + event(60, "c", ID, EMAIL) + event(61, "d", ID, PHONE), apart)
    assert later.customer_of[ID] == "crm-1" and later.customer_of[EMAIL] == later.customer_of[PHONE] != "crm-1"
    assert {(r.link.event_id, r.reason) for r in later.refusals} == {("a", "separated"), ("c", "separated"),
                                                                     ("d", "separated")}


def identifiers_strategy() -> st.SearchStrategy[Identifier]:
    return st.one_of(st.builds(Identifier, st.just("id"), st.sampled_from(["crm-1", "crm-2", "crm-3"])),
                     st.builds(Identifier, st.just("email"), st.sampled_from(["a@x.io", "b@x.io", "c@x.io", "d@x.io"])),
                     st.builds(Identifier, st.just("phone"), st.sampled_from(["+15550001", "+15550002", "+15550003"])))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.lists(identifiers_strategy(), min_size=1, max_size=3, unique=True)),
                min_size=1, max_size=25),
       st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_customers_and_the_rules_hold(
        events: list[tuple[int, list[Identifier]]], rng: random.Random) -> None:
    links = [link for i, (minute, ids) in enumerate(events)
             for link in event(minute, f"e{i}", *sorted(ids, key=lambda x: ("id", "email", "phone").index(x.kind)))]
    resolution = resolve(links)
    shuffled = links[:]
    rng.shuffle(shuffled)
    again = resolve(shuffled)
    assert again.customer_of == resolution.customer_of and again.refusals == resolution.refusals
    for customer_id, members in resolution.members.items():
        accounts = [x for x in members if x.kind == "id"]
        assert len(accounts) <= 1  # two ids never merged
        assert customer_id == (accounts[0].value if accounts else generated_id(
            min(members, key=lambda x: (resolution.first_seen[x], x))))
    refused = {r.link for r in resolution.refusals}
    for link in links:  # every link made joins its two sides; every refused one leaves them apart
        if link.other is not None:
            together = resolution.customer_of[link.anchor] == resolution.customer_of[link.other]
            assert together != (link in refused)


# -- decisions -----------------------------------------------------------------------------------
def test_a_link_between_a_generated_customer_and_an_account_merges_it_away() -> None:
    before = event(0, "pbx:1", PHONE) + event(5, "mail:1", EMAIL)
    owners = resolve(before).customer_of
    assert owners == {PHONE: generated_id(PHONE), EMAIL: generated_id(EMAIL)}
    new = event(9, "shop:1", ID, EMAIL, PHONE)
    decision = decide(owners, before, before + new, new_links=new)
    assert decision.owners == {ID: "crm-1", EMAIL: "crm-1", PHONE: "crm-1"}
    assert decision.new == [ID] and decision.created == {"crm-1"}
    assert [(m.identifiers, m.source, m.target, m.cause.event_id) for m in decision.moves] == [
        ((PHONE,), generated_id(PHONE), "crm-1", "shop:1"), ((EMAIL,), generated_id(EMAIL), "crm-1", "shop:1")]
    assert decision.merged == {generated_id(PHONE): "crm-1", generated_id(EMAIL): "crm-1"}
    assert decision.changed == {generated_id(PHONE), generated_id(EMAIL)}


def test_the_earlier_generated_customer_survives_a_merge_of_two() -> None:
    before = event(0, "pbx:1", PHONE) + event(5, "mail:1", EMAIL)
    new = event(9, "mail:2", EMAIL, PHONE)
    decision = decide(resolve(before).customer_of, before, before + new, new_links=new)
    assert decision.owners == {EMAIL: generated_id(PHONE)} and decision.created == set()
    assert decision.merged == {generated_id(EMAIL): generated_id(PHONE)}
    assert decision.changed == {generated_id(EMAIL), generated_id(PHONE)}


def test_known_links_decide_nothing_and_a_refusal_is_reported_once() -> None:
    before = event(0, "shop:1", ID, EMAIL)
    owners = resolve(before).customer_of
    assert not decide(owners, before, before + event(50, "shop:9", ID, EMAIL)).changes_anything
    household = event(30, "shop:2", ID2, EMAIL)
    decision = decide(owners, before, before + household, new_links=household)
    assert decision.owners == {ID2: "crm-2"} and decision.moves == []
    assert [(r.link.event_id, r.reason) for r in decision.refusals] == [("shop:2", "two ids")]
    again = before + household
    assert decide({**owners, ID2: "crm-2"}, again, again + event(40, "shop:3", ID2, EMAIL)).refusals == []


def test_a_separation_moves_the_identifier_out_and_a_lifted_one_back() -> None:
    links = event(0, "a", ID, EMAIL) + event(5, "b", EMAIL, PHONE)
    owners = resolve(links).customer_of
    apart = [Separation.of(EMAIL, ID)]
    split = decide(owners, links, links, separations_after=apart)
    assert [(m.identifiers, m.source, m.target, m.cause) for m in split.moves] == [
        ((EMAIL, PHONE), "crm-1", generated_id(EMAIL), None)]
    assert split.created == {generated_id(EMAIL)} and split.merged == {}
    back = decide({**owners, **split.owners}, links, links, apart, [])
    assert [(m.source, m.target) for m in back.moves] == [(generated_id(EMAIL), "crm-1")]
    assert back.merged == {generated_id(EMAIL): "crm-1"}


def test_post_events_rejects_an_unreadable_phone_or_email_naming_the_field() -> None:
    import json

    from services.http.events import split_events_body

    def call(event_id: str, **customer: str) -> dict[str, object]:
        return {"event_id": event_id, "type": "call", "occurred_at": "2026-03-01T10:00:00Z", "customer": customer,
                "data": {"direction": "inbound", "duration_seconds": 1}}

    body = json.dumps([call("ok", id="crm-1", phone="077 123 4567"), call("p", phone="call me"),
                       call("e", email="ana(at)example.com")]).encode()
    items, errors = split_events_body(body, "LK")
    assert [envelope.event_id for _, envelope in items] == ["ok"]
    assert [(e["index"], e["event_id"]) for e in errors] == [(1, "p"), (2, "e")]
    assert "customer.phone 'call me'" in errors[0]["reason"] and "customer.email" in errors[1]["reason"]


def test_emails_and_phones_are_matched_as_keyed_hashes_and_ids_as_written() -> None:
    from domain.identity import for_matching, key_fingerprint

    key, other = b"k" * 32, b"o" * 32
    email, phone, account = Identifier("email", "ana@example.com"), Identifier("phone", "+94771234567"), Identifier("id", "crm-1")
    hashed = for_matching(email, key)
    assert hashed.kind == "email" and hashed.value.startswith("#") and len(hashed.value) == 33
    assert "ana" not in hashed.value and hashed == for_matching(email, key)  # stable under one key
    assert for_matching(email, other) != hashed  # another key: another hash (not a plain digest of the email)
    assert for_matching(Identifier("email", "ana@example.org"), key) != hashed
    assert for_matching(Identifier("phone", email.value), key) != hashed  # the kind is part of what is hashed
    assert for_matching(phone, key).value.startswith("#") and for_matching(account, key) == account
    assert for_matching(hashed, key) == hashed  # already hashed: kept
    assert for_matching(email, None) == email
    assert identifiers_of({"id": "crm-1", "email": " Ana@Example.com "}, key=key) == (account, hashed)
    assert key_fingerprint(key) == key_fingerprint(key) != key_fingerprint(other) and len(key_fingerprint(key)) == 16
