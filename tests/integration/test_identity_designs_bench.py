"""Smoke test of bench/identity_designs.py: the decision reaches one end state whatever the order
of the writers' shares, and a tiny run of both designs (1 and 2 writers) ends where it should."""

from __future__ import annotations

import json

import pytest

from bench.identity_designs import anchor_share, generate_facts, main, reference

pytestmark = pytest.mark.integration


def test_the_decision_reaches_the_same_partition_whatever_order_the_shares_are_taken_in() -> None:
    facts, _ = generate_facts(3000, 300)
    expected, kinds = reference(facts)
    assert kinds["merged"] and kinds["refused"]
    reclaimed = 0
    for writers in (2, 3):
        shares = [[f for f in facts if anchor_share(f, writers) == k] for k in range(writers)]
        for order in (range(writers), reversed(range(writers))):
            view, kinds = reference([f for k in order for f in shares[k]])
            assert view.partition() == expected.partition()
            reclaimed += kinds["reclaimed"]
    assert reclaimed  # the late, earlier claim of a shared email was exercised


def test_a_tiny_run_of_both_designs_ends_in_the_reference_state(stack: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--facts", "400", "--persons", "40", "--batch", "50", "--writers", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["end_state_match"] is True
    assert {k for k in result if k.endswith("_fps")} == {
        f"{d}_b{b}_w{w}_fps" for d in "ab" for b in (1, 50) for w in (1, 2)}
