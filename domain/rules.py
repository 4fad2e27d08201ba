"""Pure business rules shared by read models, the API and (later) audits. Each rule lives here once.
Lifecycle stages have a module of their own: `domain.lifecycle`."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext


def nps_category(score: int | None) -> str | None:
    """9–10 promoter, 7–8 passive, 0–6 detractor (contract §3)."""
    if score is None:
        return None
    if score >= 9:
        return "promoter"
    return "passive" if score >= 7 else "detractor"


def preferred_channel(
    inbound_calls: int,
    last_inbound_call_at: datetime | None,
    inbound_emails: int,
    last_inbound_email_at: datetime | None,
) -> str | None:
    """Of inbound calls ('phone') and inbound emails ('email'), the one with more events;
    a tie goes to the one with the later event; None with neither (contract §3)."""
    if inbound_calls == 0 and inbound_emails == 0:
        return None
    if inbound_calls != inbound_emails:
        return "phone" if inbound_calls > inbound_emails else "email"
    assert last_inbound_call_at is not None and last_inbound_email_at is not None
    return "phone" if last_inbound_call_at > last_inbound_email_at else "email"


# Amounts have at most 30 digits (the contract's bound): with 60 digits of precision, sums of
# up to 10^29 of them and their averages are exact (Python's default context keeps only 28).
MONEY_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)


def average_order_value(revenue: Decimal, orders: int) -> Decimal:
    """Revenue / orders, to the same number of decimal places as the revenue."""
    exponent = min(revenue.as_tuple().exponent, 0)  # type: ignore[type-var]
    with localcontext(MONEY_CONTEXT):
        return (revenue / orders).quantize(Decimal(1).scaleb(exponent))
