"""Regime hysteresis: per-bar probabilities + SSR/LULD state -> the emitted regime of a symbol.

The probabilities are first averaged over bars, ``p_t = a * probs_t + (1 - a) * p_{t-1}`` (``a = ema_alpha``;
``1/a`` bars of memory), so one noisy bar cannot clear a margin on its own. Rules, applied once per bar
(one smoother per symbol; a plain picklable object, so a Bytewax ``stateful_map`` can keep it as the
per-key state and snapshot it):

1. **SSR/LULD override.** The feed's ``SsrLuldState`` is ground truth for the two restriction regimes, so
   the classifier is never trusted for them: ``HALTED`` or ``LULD_LIMIT`` -> ``luld_active``;
   ``SSR_ACTIVE`` -> ``ssr_active`` (precedence HALTED > LULD_LIMIT > SSR_ACTIVE > NORMAL, as in the
   enum). An override is emitted on the bar it starts, bypassing the dwell: a restriction is an event, not
   a noisy estimate.
2. **Release.** When the state returns to ``NORMAL`` (or on the first bar) the smoother emits the arg-max
   of the probabilities over the six model regimes (``ssr_active``/``luld_active`` masked out) and the
   dwell restarts.
3. **Hysteresis.** Otherwise, with incumbent ``c`` and best challenger ``j`` (masked probabilities ``p``),
   switch to ``j`` only if the incumbent has been emitted for at least ``min_dwell_bars`` bars **and**
   either ``p_j >= p_c + enter_margin`` (the challenger clearly wins) or ``p_c <= exit_prob`` and ``p_j >
   p_c`` (the incumbent has collapsed).

Stability bound: two model-driven switches are at least ``min_dwell_bars`` bars apart, so a day of ``n``
bars has at most ``ceil(n / min_dwell_bars)`` of them; ``from_stability_threshold(s)`` sets
``min_dwell_bars = ceil(1/s)`` (the specification's ``stability_threshold = 0.05`` -> 20 bars), which
keeps the model-driven change rate at or below ``s``. Restriction events come on top: they are real, rare,
and must not be delayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from conditioning.regime import REGIME_INDEX, REGIME_NAMES
from schemas.layout import SsrLuldState

SSR = REGIME_INDEX["ssr_active"]
LULD = REGIME_INDEX["luld_active"]
_OVERRIDE = {
    SsrLuldState.HALTED: LULD,
    SsrLuldState.LULD_LIMIT: LULD,
    SsrLuldState.SSR_ACTIVE: SSR,
}
_MODEL_MASK = np.ones(len(REGIME_NAMES), dtype=bool)
_MODEL_MASK[[SSR, LULD]] = False


@dataclass(slots=True)
class SmootherState:
    """Recurrent state of one symbol's smoother."""

    regime: int | None = None  # emitted regime index, None before the first bar
    ema: np.ndarray | None = None  # [num_regimes] exponentially averaged probabilities
    bars_in_regime: int = 0  # bars the current regime has been emitted, this bar included
    switches: int = 0  # regime changes so far (first bar not counted): for monitoring


class RegimeSmoother:
    def __init__(
        self, min_dwell_bars: int = 20, enter_margin: float = 0.2, exit_prob: float = 0.2, ema_alpha: float = 0.2
    ):
        if min_dwell_bars < 1:
            raise ValueError(f"min_dwell_bars must be >= 1, got {min_dwell_bars}")
        if not 0.0 <= enter_margin < 1.0:
            raise ValueError(f"enter_margin must be in [0, 1), got {enter_margin}")
        if not 0.0 <= exit_prob < 1.0:
            raise ValueError(f"exit_prob must be in [0, 1), got {exit_prob}")
        if not 0.0 < ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in (0, 1], got {ema_alpha}")
        self.min_dwell_bars = min_dwell_bars
        self.ema_alpha = ema_alpha
        self.enter_margin = enter_margin
        self.exit_prob = exit_prob
        self.state = SmootherState()

    @classmethod
    def from_stability_threshold(cls, stability_threshold: float, **kwargs) -> RegimeSmoother:
        """Dwell ``ceil(1 / stability_threshold)`` bars: model-driven changes on <= that share of bars."""
        if not 0.0 < stability_threshold < 1.0:
            raise ValueError(f"stability_threshold must be in (0, 1), got {stability_threshold}")
        return cls(min_dwell_bars=math.ceil(1.0 / stability_threshold), **kwargs)

    def update(self, probs: np.ndarray, ssr_luld: SsrLuldState = SsrLuldState.NORMAL) -> int:
        """One bar: ``probs [num_regimes]`` (softmax of the classifier's logits) -> emitted regime index."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(REGIME_NAMES),) or not np.all(np.isfinite(probs)):
            raise ValueError(f"probs must be {len(REGIME_NAMES)} finite probabilities, got {probs!r}")
        st = self.state
        st.ema = probs if st.ema is None else self.ema_alpha * probs + (1.0 - self.ema_alpha) * st.ema
        probs = st.ema
        override = _OVERRIDE.get(SsrLuldState(ssr_luld))
        if override is not None:
            target = override
        else:
            p = np.where(_MODEL_MASK, probs, -np.inf)
            best = int(np.argmax(p))
            if st.regime is None or not _MODEL_MASK[st.regime]:
                target = best  # first bar, or an override just ended: no incumbent to defend
            elif best != st.regime and st.bars_in_regime >= self.min_dwell_bars:
                p_c, p_j = probs[st.regime], probs[best]
                wins = p_j >= p_c + self.enter_margin or (p_c <= self.exit_prob and p_j > p_c)
                target = best if wins else st.regime
            else:
                target = st.regime
        if target == st.regime:
            st.bars_in_regime += 1
        else:
            st.switches += st.regime is not None
            st.regime, st.bars_in_regime = target, 1
        return target
