"""Satisfaction rules (contract §3, §3b): alarm answers, CSAT satisfaction, NPS, survey channels."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

# The channel of a survey response is the type of the event its `about_event_id` names (§3b).
CHANNEL_BY_EVENT_TYPE: dict[str, str] = {"call": "phone", "email": "email", "purchase": "purchase"}
UNKNOWN_CHANNEL = "unknown"
CHANNELS: tuple[str, ...] = (*CHANNEL_BY_EVENT_TYPE.values(), UNKNOWN_CHANNEL)
NPS_CATEGORIES: tuple[str, ...] = ("promoter", "passive", "detractor")


def is_alarm_answer(kind: str | None, score: int | None) -> bool:
    """An NPS score below 6 or a CSAT score below 3 (the seeds: "below 6 is an alarm")."""
    return score is not None and ((kind == "nps" and score < 6) or (kind == "csat" and score < 3))


def is_satisfied_csat(score: int) -> bool:
    """A CSAT score of 4 or 5 counts as satisfied (`csat` = 100 × their share)."""
    return score >= 4


def nps(promoters: int, detractors: int, responses: int) -> float | None:
    """100 × (promoters − detractors) / responses, to two decimals."""
    return round(100 * (promoters - detractors) / responses, 2) if responses else None


def share_percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 2) if whole else None


def per_customer(revenue: Decimal, customers: int) -> Decimal:
    """Revenue / customers, rounded half-even to 2 places (contract §3b)."""
    return (revenue / customers).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
