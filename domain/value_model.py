"""Customer value models: BG/NBD (how many purchases, and is the customer still "alive") and
Gamma-Gamma (how much per purchase), fitted and applied with `lifetimes`.

Conventions are the papers' (Fader, Hardie & Lee 2005, "Counting your customers" the easy way; and
"RFM and CLV"): a customer's purchases are counted per distinct day; `frequency` is the number of
repeat purchase days (days after the first); `recency` is the time from the first purchase day to
the latest, `age` (the papers' T) from the first purchase day to the end of the period, both in
weeks of days/7; `monetary` is the average value of the repeat purchase days. The Gamma-Gamma
model is fitted on customers with at least one repeat purchase, as the paper does.

Pure computation: no I/O. `lifetimes` (and pandas with it) is imported here only, so processes that
do not value customers never load it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # lifetimes 0.11.3 sets a pandas option pandas 3 deprecated, when imported
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import ConvergenceError

WEEKS_PER_MONTH = 4.345  # lifetimes' own factor for monthly steps over weekly data
HORIZON_MONTHS = 12


class FitError(ValueError):
    """The purchases given cannot be fitted; the message says why and what to change."""


@dataclass(frozen=True)
class BgNbd:
    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float
    gamma: float


@dataclass(frozen=True)
class Histories:
    """Purchase histories of many customers, one array entry per customer (module docstring)."""

    frequency: np.ndarray  # repeat purchase days
    recency: np.ndarray  # weeks
    age: np.ndarray  # weeks (T)
    monetary: np.ndarray  # average value of a repeat purchase day; 0 without repeats

    @classmethod
    def of_days(cls, rows: Sequence[tuple[int, int, int, float]]) -> Histories:
        """From rows (repeat days, days from first to latest purchase day, days from first purchase
        day to the period's end, average repeat-day value)."""
        data = np.array(rows, dtype=float).reshape(-1, 4)
        return cls(data[:, 0], data[:, 1] / 7, data[:, 2] / 7, data[:, 3])

    def __len__(self) -> int:
        return len(self.frequency)


@dataclass(frozen=True)
class Predictions:
    p_alive: np.ndarray
    expected_purchases: np.ndarray  # over the horizon
    clv: np.ndarray  # discounted value of the horizon's expected purchases


def fit(histories: Histories) -> tuple[BgNbd, GammaGamma]:
    """Maximum-likelihood BG/NBD and Gamma-Gamma parameters of these histories. Gamma-Gamma is
    fitted on the customers whose repeat days are worth something (free repeat orders carry no
    spend to model), as lifetimes' documentation does; BG/NBD on everyone."""
    repeaters = histories.frequency > 0
    spenders = repeaters & (histories.monetary > 0)
    if len(histories) < 10 or spenders.sum() < 10:
        raise FitError(f"too few purchases to fit: {len(histories)} customers, {int(spenders.sum())} with a paid repeat "
                       "purchase day (at least 10 of each are needed); widen the period (calibration_end), or pick "
                       "another currency or source")
    # lifetimes warns about pandas idioms, not about the fit, and prints the optimiser's state when it fails
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            bgf = _converged(lambda tol: BetaGeoFitter(penalizer_coef=0.0).fit(
                pd.Series(histories.frequency), pd.Series(histories.recency), pd.Series(histories.age), tol=tol))
            ggf = _converged(lambda tol: GammaGammaFitter(penalizer_coef=0.0).fit(
                pd.Series(histories.frequency[spenders]), pd.Series(histories.monetary[spenders]), tol=tol))
        except ConvergenceError as error:
            raise FitError(f"the models did not converge on these purchases ({len(histories)} customers, "
                           f"{int(repeaters.sum())} with a repeat purchase day): the data may not follow them, or be too "
                           f"few; widen the period or pick another source. lifetimes said: "
                           f"{str(error).strip().splitlines()[0]}") from None
    b, g = bgf.params_, ggf.params_
    bgnbd = BgNbd(float(b["r"]), float(b["alpha"]), float(b["a"]), float(b["b"]))
    gamma_gamma = GammaGamma(float(g["p"]), float(g["q"]), float(g["v"]))
    found = {**vars(bgnbd), **vars(gamma_gamma)}
    if not all(np.isfinite(v) and v > 0 for v in found.values()):
        raise FitError("the fit gave parameters that are not positive numbers ("
                       + ", ".join(f"{k} {v:g}" for k, v in found.items())
                       + "): the purchases do not follow the models; widen the period or pick another source")
    if gamma_gamma.q <= 1:
        # The expected spend per purchase is p·γ/(q − 1): with q ≤ 1 it has no finite mean.
        raise FitError(f"spend per purchase is too heavy-tailed for Gamma-Gamma (q {gamma_gamma.q:.3f} ≤ 1: no finite "
                       "expected order value); fit a period, currency or source without the outliers")
    return bgnbd, gamma_gamma


# lifetimes asks BFGS for a gradient tolerance of 1e-7 and calls any "precision loss" stop a failure,
# which the order of the rows alone can decide; a looser tolerance still fixes the parameters to
# about 5 significant digits (measured on CDNOW), far inside what the data can tell.
_TOLERANCES = (1e-7, 1e-6, 1e-5)


def _converged(fitting: Callable[[float], Any]) -> Any:
    """The fitter `fitting(tol)` gives at the tightest tolerance it converges at."""
    for tol in _TOLERANCES[:-1]:
        try:
            return fitting(tol)
        except ConvergenceError:
            continue
    return fitting(_TOLERANCES[-1])


def monthly_rate(annual_rate: float) -> float:
    """The monthly discount rate compounding to `annual_rate` over 12 months."""
    return (1 + annual_rate) ** (1 / 12) - 1


def predict(bgnbd: BgNbd, gamma_gamma: GammaGamma, histories: Histories, annual_discount_rate: float) -> Predictions:
    """Per customer: probability alive now, expected purchase days over the next 12 months, and
    their expected value discounted monthly at `annual_discount_rate`."""
    bgf, ggf = BetaGeoFitter(), GammaGammaFitter()
    bgf.params_ = pd.Series({"r": bgnbd.r, "alpha": bgnbd.alpha, "a": bgnbd.a, "b": bgnbd.b})
    ggf.params_ = pd.Series({"p": gamma_gamma.p, "q": gamma_gamma.q, "v": gamma_gamma.gamma})
    bgf.predict = bgf.conditional_expected_number_of_purchases_up_to_time  # what `fit` would alias; CLV calls it
    f, r, t, m = (pd.Series(a) for a in (histories.frequency, histories.recency, histories.age, histories.monetary))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_alive = np.asarray(bgf.conditional_probability_alive(f, r, t), dtype=float)
        expected = np.asarray(bgf.conditional_expected_number_of_purchases_up_to_time(
            HORIZON_MONTHS * WEEKS_PER_MONTH, f, r, t), dtype=float)
        clv = np.asarray(ggf.customer_lifetime_value(
            bgf, f, r, t, m, time=HORIZON_MONTHS, discount_rate=monthly_rate(annual_discount_rate), freq="W"),
            dtype=float)
    return Predictions(p_alive, expected, clv)
