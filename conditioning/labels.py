"""Regime labels for training and judging the classifier: the simulator's truth, or statistical evidence.

Neither source fixes class shares in advance; a regime is named only where the truth or a stated test says so,
and ``normal`` takes the rest.

**Lookback.** A bar ending at ``T`` is described by inputs over ``[T - L, T)`` with
``L = max(lookback_ns, pattern_bars x bar_ns)``: the 20-d regime features use the trailing ``lookback`` (30
bars by default, conditioning/features/state.py) and the pattern vector, on which the evidence tests run, the
last 32 bars (conditioning/features/pattern.py). The level baselines reach further back, but they are the
symbol's *normal*, not the regime being named.

**Truth** (:func:`truth_labels`, simulated markets, ``conditioning.sim.market``): the simulator plants
stretches of five regimes, mapped by :data:`PLANTED` (``calm -> low_vol``, ``volatile -> high_vol``, the
others by name). A bar gets the planted regime that covers at least ``dominance`` (default 2/3) of its
lookback, time outside every stretch (the overnight gap) counting as covered by none; ``luld_active`` /
``ssr_active`` where the feed state in the features is LULD_LIMIT or HALTED / SSR_ACTIVE (the state is exact,
the simulator scripts it); ``normal`` where no planted regime dominates (a window straddling a change).

**Evidence** (:class:`EvidenceRules`, any market: the real samples have no truth). On the raw 20-d features
and the pattern's 32 volatility-normalised bar returns ``z_1..z_32`` (channel 0; scale-free, so the tests
below need no units), first match wins:

1. ``luld_active``: the LULD_LIMIT or HALTED one-hot is set; 2. ``ssr_active``: the SSR_ACTIVE one-hot;
3. ``illiquid``: price impact and quoted spread both at least ``liquidity_factor`` x the symbol's normal:
   ``log_amihud_rel >= log f`` and ``log_spread_quoted_rel_tw_rel >= log f`` (default f = 2);
4. ``trending``: a drift, by the two-sided t-test of zero mean return at level ``alpha``:
   ``t = sqrt(n) mean(z) / sd(z)`` (``sd`` with ``n - 1``), ``|t| >= t_{n-1, 1 - alpha/2}``, n = 32;
5. ``mean_reverting``: the Dickey-Fuller test rejects a unit root at level ``alpha``: with the path
   ``x_b = z_1 + ... + z_b``, the OLS regression ``z_b = a + rho x_{b-1} + e_b`` (b = 2..32, T = 31
   observations) gives ``tau = rho_hat / se(rho_hat)``; reject for ``tau <= tau_c(alpha, T)``, the MacKinnon
   (2010) response surface with a constant (-2.960 at 5%, -3.661 at 1% for T = 31);
6. ``high_vol`` / 7. ``low_vol``: noise-robust variance (TSRV) at least ``vol_factor`` x / at most
   1 / ``vol_factor`` x the symbol's normal: ``|log_tsrv_rel| >= log v`` (default v = 2);
8. ``normal``: otherwise (also where a test's statistic is undefined: no evidence, no regime).

Under the random-walk null each test names a regime on about ``alpha`` of the bars
(tests/conditioning/test_labels.py checks both sizes by simulation). Known distortion: bid-ask bounce in
last-trade prices makes one-minute returns negatively autocorrelated, so the Dickey-Fuller test over-rejects
on stocks whose tick is large against their one-minute volatility (cheap, quiet stocks); see docs/models.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from conditioning.features.pattern import N_CHANNELS, PATTERN_BARS
from conditioning.features.state import FeatureParams
from conditioning.regime import REGIME_INDEX
from conditioning.sim.market import Stretch
from schemas.layout import REGIME_FEATURE_DIM, REGIME_FEATURE_NAMES

_COL = {name: i for i, name in enumerate(REGIME_FEATURE_NAMES)}

#: The regime the classifier should name for each planted regime of the simulator.
PLANTED: dict[str, str] = {
    "calm": "low_vol",
    "volatile": "high_vol",
    "trending": "trending",
    "mean_reverting": "mean_reverting",
    "illiquid": "illiquid",
}

#: Share of a bar's lookback a planted regime must cover to name the bar (truth labels).
DOMINANCE = 2 / 3

#: Two-sided critical values of Student's t with PATTERN_BARS - 1 = 31 degrees of freedom.
T_CRIT: dict[float, float] = {0.05: 2.0395, 0.01: 2.7440}
#: Dickey-Fuller tau with a constant, T = PATTERN_BARS - 1 = 31 regressions: MacKinnon (2010), Table 2,
#: ``tau_c = b_inf + b_1 / T + b_2 / T^2 + b_3 / T^3`` with (-2.86154, -2.8903, -4.234, -40.040) at 5% and
#: (-3.43035, -6.5393, -16.786, -79.433) at 1%.
DF_CRIT: dict[float, float] = {0.05: -2.960, 0.01: -3.661}


def lookback_ns(params: FeatureParams) -> int:
    """``L = max(lookback, pattern_bars x bar)``: the span of a bar's inputs (module docstring), in ns."""
    return max(params.lookback_ns, params.pattern_bars * params.bar_ns)


def restriction_labels(raw: np.ndarray) -> np.ndarray:
    """``raw [N, 20]`` -> regime index ``[N]``: ``luld_active`` (LULD_LIMIT or HALTED), ``ssr_active``, else -1."""
    raw = _check_raw(raw)
    out = np.full(len(raw), -1, dtype=np.int64)
    out[raw[:, _COL["ssr_luld_ssr_active"]] > 0.5] = REGIME_INDEX["ssr_active"]
    luld = (raw[:, _COL["ssr_luld_luld_limit"]] > 0.5) | (raw[:, _COL["ssr_luld_halted"]] > 0.5)
    out[luld] = REGIME_INDEX["luld_active"]
    return out


def planted_coverage(
    symbol: np.ndarray, window_end_ns: np.ndarray, stretches: Sequence[Stretch], lookback: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each bar, the planted regime covering most of ``[end - lookback, end)`` and the fraction it covers.

    Returns ``(regime [N] object array of planted names, '' where no stretch overlaps; fraction [N] in [0, 1])``.
    """
    symbol, end = np.asarray(symbol), np.asarray(window_end_ns, dtype=np.int64)
    best = np.zeros(len(end))
    regime = np.full(len(end), "", dtype=object)
    start = end - lookback
    for s in stretches:
        rows = np.flatnonzero(symbol == s.symbol)
        overlap = np.minimum(end[rows], s.end_ns) - np.maximum(start[rows], s.start_ns)
        frac = np.clip(overlap, 0, None) / lookback
        better = frac > best[rows]
        best[rows[better]] = frac[better]
        regime[rows[better]] = s.regime
    return regime, best


def truth_labels(
    symbol: np.ndarray,
    window_end_ns: np.ndarray,
    raw: np.ndarray,
    stretches: Sequence[Stretch],
    params: FeatureParams,
    *,
    dominance: float = DOMINANCE,
) -> np.ndarray:
    """Training labels from the simulator's truth (module docstring): regime index ``[N]`` (int64)."""
    if not 0.5 < dominance <= 1.0:
        raise ValueError(f"dominance must be in (0.5, 1], got {dominance}")
    planted, frac = planted_coverage(symbol, window_end_ns, stretches, lookback_ns(params))
    labels = np.full(len(planted), REGIME_INDEX["normal"], dtype=np.int64)
    for name, regime in PLANTED.items():
        labels[(planted == name) & (frac >= dominance)] = REGIME_INDEX[regime]
    restricted = restriction_labels(raw)
    return np.where(restricted >= 0, restricted, labels)


def trend_t(z: np.ndarray) -> np.ndarray:
    """``[N, n]`` returns -> ``[N]`` t statistic of zero mean ``sqrt(n) mean / sd`` (0 where ``sd = 0``)."""
    n = z.shape[1]
    sd = z.std(axis=1, ddof=1)
    return np.divide(math.sqrt(n) * z.mean(axis=1), sd, out=np.zeros(len(z)), where=sd > 0)


def dickey_fuller_tau(z: np.ndarray) -> np.ndarray:
    """``[N, n]`` returns -> ``[N]`` Dickey-Fuller tau with a constant (module docstring; 0 where undefined)."""
    x = np.cumsum(z, axis=1)[:, :-1]  # x_{b-1}, b = 2..n
    y = z[:, 1:]
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    sxx = (xc * xc).sum(axis=1)
    ok = sxx > 0
    rho = np.divide((xc * yc).sum(axis=1), sxx, out=np.zeros(len(z)), where=ok)
    resid = yc - rho[:, None] * xc
    s2 = (resid * resid).sum(axis=1) / (y.shape[1] - 2)  # two fitted parameters: a and rho
    se = np.sqrt(np.divide(s2, sxx, out=np.zeros(len(z)), where=ok))
    return np.divide(rho, se, out=np.zeros(len(z)), where=se > 0)


def pattern_returns(pattern: np.ndarray) -> np.ndarray:
    """``pattern [N, 128]`` -> the volatility-normalised bar returns ``[N, 32]`` (channel 0), float64."""
    p = np.asarray(pattern, dtype=np.float64)
    return p.reshape(len(p), PATTERN_BARS, N_CHANNELS)[:, :, 0]


@dataclass(frozen=True)
class EvidenceRules:
    """The evidence rules of the module docstring, with their stated levels and factors."""

    alpha: float = 0.05  # 0.05 or 0.01: the levels with tabulated critical values
    vol_factor: float = 2.0
    liquidity_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.alpha not in T_CRIT:
            raise ValueError(f"alpha must be one of {sorted(T_CRIT)}, got {self.alpha}")
        if not (self.vol_factor > 1.0 and self.liquidity_factor > 1.0):
            raise ValueError(f"factors must be > 1, got {self.vol_factor}, {self.liquidity_factor}")

    def apply(self, raw: np.ndarray, pattern: np.ndarray) -> np.ndarray:
        """``raw [N, 20]`` (NaN allowed: no evidence), ``pattern [N, 128]`` -> regime index ``[N]`` (int64)."""
        raw = _check_raw(raw)
        z = pattern_returns(pattern)
        if len(z) != len(raw):
            raise ValueError(f"{len(raw)} feature rows but {len(z)} patterns")
        log_v, log_l = math.log(self.vol_factor), math.log(self.liquidity_factor)
        tsrv = raw[:, _COL["log_tsrv_rel"]]
        with np.errstate(invalid="ignore"):  # NaN compares False: no evidence
            rules = [  # first match wins
                (
                    "illiquid",
                    (raw[:, _COL["log_amihud_rel"]] >= log_l) & (raw[:, _COL["log_spread_quoted_rel_tw_rel"]] >= log_l),
                ),
                ("trending", np.abs(trend_t(z)) >= T_CRIT[self.alpha]),
                ("mean_reverting", dickey_fuller_tau(z) <= DF_CRIT[self.alpha]),
                ("high_vol", tsrv >= log_v),
                ("low_vol", tsrv <= -log_v),
            ]
        labels = np.full(len(raw), REGIME_INDEX["normal"], dtype=np.int64)
        for name, hit in reversed(rules):  # later assignments win, so apply in reverse precedence
            labels[hit] = REGIME_INDEX[name]
        restricted = restriction_labels(raw)
        return np.where(restricted >= 0, restricted, labels)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "t_crit": T_CRIT[self.alpha], "df_crit": DF_CRIT[self.alpha]}


def _check_raw(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != REGIME_FEATURE_DIM:
        raise ValueError(f"raw features must be [N, {REGIME_FEATURE_DIM}], got {raw.shape}")
    return raw
