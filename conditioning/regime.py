"""Per-bar regime classifier over the 20-d normalised regime features (layout: ``REGIME_FEATURE_NAMES``).

A small MLP ``20 -> 128 -> 128 -> 8`` (20,232 parameters) returning logits. It is deliberately memoryless:
persistence is the job of ``conditioning.hysteresis.RegimeSmoother``, which turns the per-bar probabilities
and the feed's SSR/LULD state into the emitted regime.
"""

from __future__ import annotations

from torch import Tensor, nn

from schemas.layout import NUM_REGIMES

#: Output order of the classifier; index i of the logits is REGIME_NAMES[i].
REGIME_NAMES: tuple[str, ...] = (
    "low_vol",
    "high_vol",
    "trending",
    "mean_reverting",
    "ssr_active",
    "luld_active",
    "illiquid",
    "normal",
)
assert len(REGIME_NAMES) == NUM_REGIMES
REGIME_INDEX = {name: i for i, name in enumerate(REGIME_NAMES)}

HIDDEN = 128


class RegimeClassifier(nn.Module):
    def __init__(self, input_dim: int, num_regimes: int = NUM_REGIMES):
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"RegimeClassifier: input_dim must be >= 1, got {input_dim}")
        # The labels (conditioning/labels.py) and the smoother's SSR/LULD override are
        # defined for exactly these regimes; another count would have no meaning attached to its outputs.
        if num_regimes != len(REGIME_NAMES):
            raise ValueError(
                f"RegimeClassifier: num_regimes must be {len(REGIME_NAMES)} ({', '.join(REGIME_NAMES)}), "
                f"got {num_regimes}"
            )
        self.input_dim = input_dim
        self.num_regimes = num_regimes
        self.net = nn.Sequential(
            nn.Linear(input_dim, HIDDEN),
            nn.GELU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.GELU(),
            nn.Linear(HIDDEN, num_regimes),
        )

    def forward(self, features: Tensor) -> Tensor:
        """``features [B, input_dim]`` (normalised) -> logits ``[B, num_regimes]``."""
        if features.ndim != 2 or features.shape[1] != self.input_dim:
            raise ValueError(f"regime features must be [B, {self.input_dim}], got {list(features.shape)}")
        return self.net(features)

    def get_regime_names(self) -> list[str]:
        return list(REGIME_NAMES)
