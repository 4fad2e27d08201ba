"""RFM segment names (domain.segments) and the value model's fit (domain.value_model), without I/O."""

from __future__ import annotations

from collections import defaultdict
from datetime import date

import numpy as np
import pytest

from domain import segments
from domain.value_model import FitError, Histories, fit, monthly_rate, predict
from services import cdnow


def test_the_map_names_every_cell_with_one_of_the_eight_segments() -> None:
    cells = segments.segment_map()
    assert len(cells) == 25 and {name for *_, name in cells} == set(segments.SEGMENTS)
    assert set(segments.MEANINGS) == set(segments.SEGMENTS)


@pytest.mark.parametrize(("r", "f", "name"), [
    (5, 5, "champions"), (5, 4, "champions"), (4, 5, "loyal"), (3, 4, "loyal"), (5, 1, "new"), (4, 1, "new"),
    (5, 2, "potential_loyalists"), (3, 3, "potential_loyalists"), (2, 3, "at_risk"), (1, 4, "at_risk"),
    (1, 5, "cant_lose"), (2, 5, "cant_lose"), (3, 1, "hibernating"), (2, 2, "hibernating"), (1, 2, "hibernating"),
    (1, 1, "lost"),
])
def test_cells_of_the_map(r: int, f: int, name: str) -> None:
    assert segments.segment_of(r, f) == name


def test_scores_outside_1_to_5_are_refused() -> None:
    with pytest.raises(ValueError, match="1 to 5"):
        segments.segment_of(0, 3)


def cdnow_histories(end: date) -> Histories:
    """The sample summarised here from its own text (not by services.value's SQL): per customer and day."""
    days: dict[str, dict[date, float]] = defaultdict(lambda: defaultdict(float))
    for line in cdnow.sample_text().split("\n"):
        if line.strip():
            customer, _, day, _, amount = line.split()
            when = date(int(day[:4]), int(day[4:6]), int(day[6:]))
            if when <= end:
                days[customer][when] += float(amount)
    rows = []
    for by_day in days.values():
        ordered = sorted(by_day)
        repeats = [by_day[d] for d in ordered[1:]]
        rows.append((len(ordered) - 1, (ordered[-1] - ordered[0]).days, (end - ordered[0]).days,
                     sum(repeats) / len(repeats) if repeats else 0.0))
    return Histories.of_days(rows)


def test_the_cdnow_sample_fits_the_published_parameters() -> None:
    histories = cdnow_histories(date(1997, 9, 30))
    assert len(histories) == cdnow.CUSTOMERS
    bgnbd, gamma_gamma = fit(histories)
    found = {"r": bgnbd.r, "alpha": bgnbd.alpha, "a": bgnbd.a, "b": bgnbd.b, "p": gamma_gamma.p, "q": gamma_gamma.q,
             "gamma": gamma_gamma.gamma}
    assert {k: v for k, v in found.items() if abs(v - cdnow.PUBLISHED[k]) > 0.01 * cdnow.PUBLISHED[k]} == {}

    predicted = predict(bgnbd, gamma_gamma, histories, 0.10)
    assert ((predicted.p_alive >= 0) & (predicted.p_alive <= 1)).all()
    # No repeat purchase: alive for sure under BG/NBD (a customer can only die after a purchase).
    assert (predicted.p_alive[histories.frequency == 0] == 1).all()
    # Expected purchases over 12 months sum to about the sample's repeat purchases of the year after (FHL fig. 2).
    assert 0 < predicted.expected_purchases.sum() < 3 * histories.frequency.sum()
    undiscounted = predict(bgnbd, gamma_gamma, histories, 0.0)
    assert (undiscounted.clv >= predicted.clv).all() and (undiscounted.clv > predicted.clv).any()


def test_too_few_customers_cannot_be_fitted() -> None:
    with pytest.raises(FitError, match="too few purchases"):
        fit(Histories.of_days([(1, 10, 20, 5.0)] * 5))


def test_the_monthly_rate_compounds_to_the_annual() -> None:
    assert (1 + monthly_rate(0.10)) ** 12 == pytest.approx(1.10)


def test_purchases_the_models_cannot_fit_are_a_fit_error_not_a_crash() -> None:
    # Every customer buys every day of the period and never stops: no finite maximum of the likelihood.
    with pytest.raises(FitError):
        fit(Histories.of_days([(100, 100, 100, 5.0 + n % 3) for n in range(50)]))


def test_predictions_are_lifetimes_own_and_expected_purchases_times_spend() -> None:
    """The 12-month horizon in weeks and the monthly discounting, checked against lifetimes itself."""
    import numpy as np
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    histories = cdnow_histories(date(1997, 9, 30))
    bgnbd, gamma_gamma = fit(histories)
    bgf, ggf = BetaGeoFitter(), GammaGammaFitter()
    bgf.params_ = pd.Series(vars(bgnbd))
    ggf.params_ = pd.Series({"p": gamma_gamma.p, "q": gamma_gamma.q, "v": gamma_gamma.gamma})
    bgf.predict = bgf.conditional_expected_number_of_purchases_up_to_time
    f, r, t, m = (pd.Series(a) for a in (histories.frequency, histories.recency, histories.age, histories.monetary))
    theirs = ggf.customer_lifetime_value(bgf, f, r, t, m, time=12, discount_rate=monthly_rate(0.10), freq="W")
    ours = predict(bgnbd, gamma_gamma, histories, 0.10)
    assert np.allclose(ours.clv, np.asarray(theirs), rtol=1e-9)
    # Undiscounted, the CLV is the year's expected purchase days times the expected spend per day.
    flat = predict(bgnbd, gamma_gamma, histories, 0.0)
    spend = np.asarray(ggf.conditional_expected_average_profit(f, m))
    assert np.allclose(flat.clv, flat.expected_purchases * spend, rtol=1e-6)
    assert np.allclose(flat.expected_purchases, np.asarray(
        bgf.conditional_expected_number_of_purchases_up_to_time(52.14, f, r, t)), rtol=1e-12)


def test_spend_too_heavy_tailed_is_refused_not_a_negative_value() -> None:
    """Gamma-Gamma with q ≤ 1 has no finite expected spend (its CLVs would come out negative)."""
    histories = cdnow_histories(date(1997, 9, 30))
    rng = np.random.default_rng(3)
    heavy = histories.monetary.copy()
    for n in np.flatnonzero(histories.frequency > 0):  # CDNOW's purchase days, spend drawn with q = 0.9
        nu = rng.gamma(0.9, 1 / 15.0)
        heavy[n] = float(np.mean(rng.gamma(6.0, 1 / nu, int(histories.frequency[n]))))
    with pytest.raises(FitError, match="heavy-tailed"):
        fit(Histories(histories.frequency, histories.recency, histories.age, heavy))


def test_free_repeat_orders_leave_the_fit_to_the_paying_customers() -> None:
    histories = cdnow_histories(date(1997, 9, 30))
    paid = fit(histories)
    free = Histories(histories.frequency.copy(), histories.recency, histories.age, histories.monetary.copy())
    first_repeater = int(np.flatnonzero(free.frequency > 0)[0])
    free.monetary[first_repeater] = 0.0
    bgnbd, gamma_gamma = fit(free)
    assert bgnbd == paid[0]  # BG/NBD sees every customer, spend or not
    assert gamma_gamma != paid[1] and abs(gamma_gamma.q - paid[1].q) < 0.05
