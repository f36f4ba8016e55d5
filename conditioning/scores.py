"""Out-of-sample scores for ``make evaluate`` (benchmarks/conditioning_value.py): per-row losses, gains with
95% confidence intervals over seeds and a bootstrap of episodes, the HAR baseline, and a linear probe that tries
to name the symbol from a context.

Losses per row: squared error of the forward log realised variance (``(y - yhat)^2``, log-variance units
squared) and the log loss of the direction in bits (``-log2 p`` of the realised side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def squared_error(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return (np.asarray(y) - np.asarray(pred)) ** 2


def log_loss_bits(up: np.ndarray, p_up: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """``-log2 p(realised side)`` per row; ``up [n]`` bool, ``p_up [n]``."""
    p = np.clip(np.asarray(p_up, dtype=np.float64), eps, 1 - eps)
    return -np.where(up, np.log2(p), np.log2(1 - p))


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci95_lo": self.lo, "ci95_hi": self.hi}


def bootstrap_mean(values: np.ndarray, episode: np.ndarray, *, n_boot: int = 2_000, seed: int = 0) -> Interval:
    """Mean of ``values [S, n]`` (seeds x rows) with a 95% percentile interval from resampling seeds and
    episodes (``episode [n]``) with replacement: each replicate draws S seeds and E episodes and averages the
    drawn seeds' rows of the drawn episodes (episodes weighted by their row counts, as the mean is)."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    keys, of = np.unique(episode, return_inverse=True)
    sums = np.zeros((values.shape[0], keys.size))
    for s in range(values.shape[0]):
        sums[s] = np.bincount(of, weights=values[s], minlength=keys.size)
    counts = np.bincount(of, minlength=keys.size).astype(np.float64)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        seeds = rng.integers(0, values.shape[0], values.shape[0])
        eps = rng.integers(0, keys.size, keys.size)
        reps[b] = sums[np.ix_(seeds, eps)].sum() / (counts[eps].sum() * values.shape[0])
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return Interval(float(values.mean()), float(lo), float(hi))


def ols_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Least squares with an intercept (a tiny ridge for conditioning): HAR is this on trailing log RVs."""

    def design(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.ones((len(x), 1)), x], axis=1)

    a = design(x_train)
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y_train)
    return design(x_test) @ w


def r_squared(y: np.ndarray, pred: np.ndarray) -> float:
    """``1 - SSE / SST`` around the test rows' own mean (out of sample: may be negative)."""
    y = np.asarray(y, dtype=np.float64)
    return float(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def probe_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, epochs: int = 300
) -> float:
    """Accuracy of a multinomial logistic regression (standardised inputs, full-batch Adam, small L2) fitted on
    ``(x_train, y_train)`` at naming ``y_test`` from ``x_test``; labels are integers ``0..K-1``."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.as_tensor((x_train - mean) / std, dtype=torch.float32)
    xv = torch.as_tensor((x_test - mean) / std, dtype=torch.float32)
    yt = torch.as_tensor(y_train, dtype=torch.int64)
    k = int(max(y_train.max(), y_test.max())) + 1
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(xt.shape[1], k, generator=gen) * 0.01).requires_grad_()
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + 1e-3 * w.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((xv @ w + b).argmax(1).numpy() == y_test).mean())
