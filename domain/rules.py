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


def format_money(amount: Decimal) -> str:
    """An amount in plain decimal notation, keeping its scale: never exponent notation (which
    `str(Decimal)` uses for 1E-12, 1E+3 or 0E-12), never a negative zero.
    1E-12 → "0.000000000001", 1.20 → "1.20", 1E+3 → "1000", 0E-12 → "0.000000000000", -0.00 → "0.00"."""
    if not amount.is_finite():
        raise ValueError(f"{amount} is not an amount of money")
    if amount.is_zero():
        # No "-0"; and a zero written with a positive exponent (0E+3) is just "0", not "0000".
        amount = Decimal(0) if amount.as_tuple().exponent > 0 else amount.copy_abs()  # type: ignore[operator]
    return f"{amount:f}"  # 'f' without a precision prints every digit exactly, no rounding


def average_order_value(revenue: Decimal, orders: int) -> Decimal:
    """Revenue / orders, to the same number of decimal places as the revenue (never fewer than
    none); show it with `format_money`."""
    exponent = min(revenue.as_tuple().exponent, 0)  # type: ignore[type-var]
    with localcontext(MONEY_CONTEXT):
        return (revenue / orders).quantize(Decimal(1).scaleb(exponent))
