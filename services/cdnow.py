"""The CDNOW sample as purchase events: real data to check the value model against the papers.

`lifetimes` ships the sample Fader, Hardie & Lee used (1/10 of the customers who first bought at
CDNOW in the first quarter of 1997, their purchases to June 1998): 2,357 customers, 6,919
transactions; columns customer, customer index, date (YYYYMMDD), CDs bought, dollars. Each
transaction becomes one `purchase` envelope of customer `cdnow-<id>`, at midnight UTC of its day,
under source `cdnow`; event ids are stable, so publishing it again only makes duplicates.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from typing import Any

SOURCE = "cdnow"
CUSTOMERS, TRANSACTIONS = 2357, 6919
# Fader, Hardie & Lee (2005), calibration period to 1997-09-30 (39 weeks), and "RFM and CLV" (2005).
CALIBRATION_END = "1997-09-30"
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": 6.25, "q": 3.74, "gamma": 15.44}


def sample_text() -> str:
    return (resources.files("lifetimes.datasets") / "CDNOW_sample.txt").read_text()


def envelopes() -> Iterator[dict[str, Any]]:
    """The sample's transactions as contract §1 purchase envelopes, in file order."""
    seen: dict[tuple[str, str], int] = {}
    for line in sample_text().splitlines():
        if not line.strip():
            continue
        customer, _index, day, quantity, amount = line.split()
        n = seen[customer, day] = seen.get((customer, day), 0) + 1  # a customer may buy twice a day
        order = f"{customer}-{day}-{n}"
        yield {
            "event_id": f"{SOURCE}:{order}",
            "type": "purchase",
            "occurred_at": f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00Z",
            "customer": {"id": f"{SOURCE}-{customer}"},
            "source": SOURCE,
            "data": {"order_id": order, "amount": amount, "currency": "USD",
                     "items": [{"sku": "cd", "quantity": int(quantity), "unit_price": _unit_price(amount, quantity)}]},
        }


def _unit_price(amount: str, quantity: str) -> str:
    from decimal import ROUND_HALF_EVEN, Decimal

    count = int(quantity)
    return str((Decimal(amount) / count).quantize(Decimal("0.01"), ROUND_HALF_EVEN)) if count else amount
