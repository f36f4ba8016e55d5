"""Realized measures of one window of log prices: RV, TSRV, BPV and the Huang-Tauchen jump statistic.

All variances are raw per-window quantities in squared log-return units (not annualised). Notation follows
Zhang, Mykland & Ait-Sahalia (2005): log prices ``Y_0..Y_n`` observed in the window, ``n`` returns
``r_i = Y_i - Y_{i-1}``.

These functions are pure and vectorised; :mod:`conditioning.features.state` calls :func:`realized_measures`
at every bar close on the window's log prices, and :mod:`conditioning.features.batch` re-derives the same
sums independently (segment sums over the whole day) as the test oracle. Both share :func:`choose_tsrv_k`,
which is a modelling choice, not a sum.

References
----------
- Zhang, L., Mykland, P. A. & Ait-Sahalia, Y. (2005). A Tale of Two Time Scales: Determining Integrated
  Volatility with Noisy High-Frequency Data. JASA 100(472), 1394-1411. Eq. 55 (TSRV), eq. 64 (small-sample
  adjustment), eq. 58 (optimal number of subsamples).
- Barndorff-Nielsen, O. E. & Shephard, N. (2004). Power and Bipower Variation with Stochastic Volatility and
  Jumps. J. Financial Econometrics 2(1), 1-37.
- Huang, X. & Tauchen, G. (2005). The Relative Contribution of Jumps to Total Price Variance.
  J. Financial Econometrics 3(4), 456-499.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: ``mu_{4/3} = E|Z|^{4/3} = 2^{2/3} Gamma(7/6) / Gamma(1/2)``, used by tripower quarticity.
MU43 = 2.0 ** (2.0 / 3.0) * math.gamma(7.0 / 6.0) / math.gamma(0.5)
#: Asymptotic variance constant of the Huang-Tauchen ratio statistic: ``(pi/2)^2 + pi - 5``.
HT_THETA = (math.pi / 2.0) ** 2 + math.pi - 5.0

#: Fewest returns in a window for which RV, BPV and TSRV are reported (fewer: NaN and the ``few_obs`` flag).
DEFAULT_MIN_RETURNS = 10


@dataclass(frozen=True, slots=True)
class RealizedMeasures:
    """Realized measures of one window (squared log-return units per window; NaN when undefined).

    ``tsrv`` is the small-sample adjusted TSRV (eq. 64); ``tsrv_k`` the number of subsamples used (0 when
    undefined); ``flags`` names why something is NaN or how K was chosen (``few_obs``, ``tsrv_k_fallback``).
    """

    n_returns: int
    rv: float
    bpv: float
    tsrv: float
    tsrv_k: int
    jump_z: float
    flags: tuple[str, ...]


def realized_variance(returns: np.ndarray) -> float:
    """All-tick realized variance ``RV = sum_i r_i^2``.

    Under i.i.d. noise of variance ``E eps^2`` it is biased upward by about ``2 n E eps^2``
    (ZMA 2005, eq. 12), which is why ``RV / (2n)`` estimates the noise variance.
    """
    return float(np.dot(returns, returns))


def bipower_variation(returns: np.ndarray) -> float:
    """Bipower variation with the small-sample factor (Barndorff-Nielsen & Shephard 2004).

    ``BPV = mu_1^-2 * n/(n-1) * sum_{i=2..n} |r_i| |r_{i-1}|``, ``mu_1^-2 = pi/2``. The ``n/(n-1)`` factor
    makes it exactly unbiased for i.i.d. Gaussian returns; it converges to the integrated variance even when
    the price jumps, so ``RV - BPV`` estimates the sum of squared jumps. Needs ``n >= 2`` returns.
    """
    n = returns.shape[0]
    if n < 2:
        raise ValueError(f"bipower variation needs at least 2 returns, got {n}")
    a = np.abs(returns)
    return float((math.pi / 2.0) * n / (n - 1) * np.dot(a[1:], a[:-1]))


def tripower_quarticity(returns: np.ndarray) -> float:
    """Tripower quarticity, a jump-robust estimate of ``T * integral sigma^4`` (Barndorff-Nielsen & Shephard).

    ``TQ = n * mu_{4/3}^-3 * n/(n-2) * sum_{i=3..n} |r_i|^{4/3} |r_{i-1}|^{4/3} |r_{i-2}|^{4/3}``.
    Needs ``n >= 3`` returns.
    """
    n = returns.shape[0]
    if n < 3:
        raise ValueError(f"tripower quarticity needs at least 3 returns, got {n}")
    a = np.abs(returns) ** (4.0 / 3.0)
    return float(n * MU43**-3 * n / (n - 2) * np.sum(a[2:] * a[1:-1] * a[:-2]))


def tsrv_from_sums(slow_sum: float, rv_all: float, n: int, k: int) -> float:
    """TSRV from its two sums, small-sample adjusted (ZMA 2005 eq. 55 and eq. 64).

    ``slow_sum = sum_{i=K..n} (Y_i - Y_{i-K})^2``, so ``[Y,Y]^(avg) = slow_sum / K`` (the average of the K
    subsampled RVs); ``n_bar = (n - K + 1) / K``;
    ``TSRV = [Y,Y]^(avg) - (n_bar / n) [Y,Y]^(all)`` and ``TSRV_adj = (1 - n_bar / n)^-1 TSRV``.
    Requires ``2 <= K <= n``. Exposed so that the batch oracle can supply independently computed sums.
    """
    if not 2 <= k <= n:
        raise ValueError(f"TSRV needs 2 <= K <= n, got K={k}, n={n}")
    n_bar = (n - k + 1) / k
    return (slow_sum / k - (n_bar / n) * rv_all) / (1.0 - n_bar / n)


def _slow_sum(y: np.ndarray, k: int) -> float:
    """``sum_{i=K..n} (Y_i - Y_{i-K})^2``: K times the average of the K subsampled RVs."""
    d = y[k:] - y[:-k]
    return float(np.dot(d, d))


def tsrv(log_prices: np.ndarray, k: int) -> float:
    """Two-scales realized variance with K subsamples, small-sample adjusted (see :func:`tsrv_from_sums`)."""
    y = np.asarray(log_prices, dtype=np.float64)
    return tsrv_from_sums(_slow_sum(y, k), _slow_sum(y, 1), y.shape[0] - 1, k)


def choose_tsrv_k(n: int, rv_all: float, pilot_iv: float) -> tuple[int, bool]:
    """Data-driven number of TSRV subsamples: ``K = c n^(2/3)`` with ZMA's optimal constant (eq. 58).

    ``c* = (12 (E eps^2)^2 / (T integral sigma^4))^(1/3)``, estimated with
    - noise variance ``E eps^2 ~ RV_all / (2n)`` (ZMA eq. 12; the ``IV / (2n)`` it also contains is negligible
      at tick frequency), and
    - quarticity proxy ``T integral sigma^4 ~ IV_pilot^2``: exact for constant volatility and a lower bound
      otherwise (Cauchy-Schwarz), so K errs on the large (noise-safe) side. The pilot is the unadjusted TSRV
      at ``K_0 = n^(2/3)`` (i.e. ``c = 1``), which is consistent whatever c.

    ``K`` is rounded and clipped to ``[2, n // 2]`` so that both time scales hold at least two returns. When
    the pilot is not positive (noise swamps the signal) c falls back to 1; the second value returned is then
    True. On the ZMA design (``E eps^2 = 2.5e-7``, ``IV = 1.59e-4``, ``n = 23,400``) this gives K ~ 25, the
    optimum quoted by the paper.
    """
    if n < 4:
        raise ValueError(f"choosing K needs at least 4 returns, got {n}")
    fallback = not (pilot_iv > 0.0)
    c = 1.0 if fallback else (12.0 * (rv_all / (2.0 * n)) ** 2 / pilot_iv**2) ** (1.0 / 3.0)
    k = int(round(c * n ** (2.0 / 3.0)))
    return min(max(k, 2), n // 2), fallback


def pilot_k(n: int) -> int:
    """``K_0 = n^(2/3)`` (c = 1), clipped like :func:`choose_tsrv_k`: the pilot's number of subsamples."""
    return min(max(int(round(n ** (2.0 / 3.0))), 2), n // 2)


def huang_tauchen_z(rv: float, bpv: float, tq: float, n: int) -> float:
    """Huang-Tauchen (2005) ratio jump statistic, asymptotically N(0, 1) without jumps.

    ``z = ((RV - BPV) / RV) / sqrt(theta / n * max(1, TQ / BPV^2))``, ``theta = (pi/2)^2 + pi - 5``.
    Large positive values indicate a jump in the window; NaN when RV or BPV is zero.
    """
    if not (rv > 0.0 and bpv > 0.0):
        return math.nan
    return ((rv - bpv) / rv) / math.sqrt(HT_THETA / n * max(1.0, tq / bpv**2))


def realized_measures(
    log_prices: np.ndarray, *, k: int | None = None, min_returns: int = DEFAULT_MIN_RETURNS, jump_test: bool = True
) -> RealizedMeasures:
    """RV, BPV, TSRV (eq. 64) and the Huang-Tauchen z of one window of log prices ``Y_0..Y_n``.

    ``jump_test=False`` skips the z statistic (NaN), whose tripower quarticity costs as much as the rest together
    and which the streaming features do not publish. ``k`` fixes the number of TSRV subsamples; ``None``
    chooses it with :func:`choose_tsrv_k`. With fewer than
    ``max(min_returns, 4)`` returns everything is NaN and ``few_obs`` is flagged; a fixed ``k`` larger than
    ``n // 2`` leaves only TSRV NaN (flag ``few_obs_tsrv``). Never raises on short or constant input.
    """
    if k is not None and k < 2:
        raise ValueError(f"the number of TSRV subsamples k must be >= 2 (or None for data-driven), got {k}")
    y = np.asarray(log_prices, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"log_prices must be 1-d, got shape {y.shape}")
    n = max(y.shape[0] - 1, 0)
    if n < max(min_returns, 4):
        nan = math.nan
        return RealizedMeasures(n, nan, nan, nan, 0, nan, ("few_obs",))
    r = y[1:] - y[:-1]  # np.diff's arithmetic without its per-call overhead (this runs at every bar close)
    rv = realized_variance(r)
    bpv = bipower_variation(r)
    flags: list[str] = []
    if k is None:
        k0 = pilot_k(n)
        pilot = _slow_sum(y, k0) / k0 - (n - k0 + 1) / (k0 * n) * rv  # eq. 55, unadjusted
        k_used, fallback = choose_tsrv_k(n, rv, pilot)
        if fallback:
            flags.append("tsrv_k_fallback")
    else:
        k_used = k
    if 2 <= k_used <= n // 2:
        tsrv_value = tsrv_from_sums(_slow_sum(y, k_used), rv, n, k_used)
    else:
        flags.append("few_obs_tsrv")
        tsrv_value, k_used = math.nan, 0
    z = huang_tauchen_z(rv, bpv, tripower_quarticity(r), n) if jump_test else math.nan
    return RealizedMeasures(n, rv, bpv, tsrv_value, k_used, z, tuple(flags))
