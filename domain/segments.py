"""RFM segments: who a customer is, by how recently and how often they buy.

Each customer with purchases gets three scores from 1 to 5, quintiles among all customers with
purchases (in one currency, as of one moment): R of the days since their latest purchase (fewer is
better), F of their purchase days, M of their revenue. Customers with equal values share a score:
a score is 1 + ⌊5 × (customers with a worse value) / (customers)⌋, so a value shared by many
(most customers buy once) never splits between two scores.

Named segments come from R and F, on the widely used R×F map (Putler's RFM segments and the many
analyses that follow them), its eleven cells folded into the eight named here: "promising" into
`new`, "about to sleep" into `hibernating`, "need attention" into `potential_loyalists`, and
`lost` (R 1, F 1) kept apart from `hibernating`:

    R \\ F   1            2                    3                    4            5
    5       new          potential_loyalists  potential_loyalists  champions    champions
    4       new          potential_loyalists  potential_loyalists  loyal        loyal
    3       hibernating  hibernating          potential_loyalists  loyal        loyal
    2       hibernating  hibernating          at_risk              at_risk      cant_lose
    1       lost         hibernating          at_risk              at_risk      cant_lose

M is reported beside them (and ranks revenue) but names no segment, as in that map.
"""

from __future__ import annotations

SEGMENTS = ("champions", "loyal", "potential_loyalists", "new", "at_risk", "cant_lose", "hibernating", "lost")
SCORES = range(1, 6)
MEANINGS = {
    "champions": "bought recently and often",
    "loyal": "buy often, not the most recently",
    "potential_loyalists": "recent, a few purchases: could become loyal",
    "new": "recent, one purchase day",
    "at_risk": "bought often, not for a while",
    "cant_lose": "among the most frequent buyers, not for a long while",
    "hibernating": "few purchases, not recently",
    "lost": "one purchase day, the longest ago",
}


def segment_of(recency_score: int, frequency_score: int) -> str:
    """The named segment of R and F scores (module docstring)."""
    r, f = recency_score, frequency_score
    if r not in SCORES or f not in SCORES:
        raise ValueError(f"RFM scores are 1 to 5, not R {r} F {f}")
    if r >= 4:
        if f == 1:
            return "new"
        if f <= 3:
            return "potential_loyalists"
        return "champions" if r == 5 else "loyal"
    if r == 3:
        return "hibernating" if f <= 2 else "potential_loyalists" if f == 3 else "loyal"
    if f == 5:
        return "cant_lose"
    if f >= 3:
        return "at_risk"
    return "lost" if r == 1 and f == 1 else "hibernating"


def segment_map() -> list[tuple[int, int, str]]:
    """Every (R, F, segment): the map as rows, for queries that name segments in SQL."""
    return [(r, f, segment_of(r, f)) for r in SCORES for f in SCORES]
