"""Leakage audit: does the conditioning output carry the puzzle id?

Estimator. Plug-in mutual information between a discrete output ``X`` (``M`` values) and the id ``Y`` (``K``
values) is biased upward by about ``(K-1)(M-1) / (2 N ln 2)`` bits with no dependence at all (0.216 bits for
4 regimes, 1,000 ids, 10k samples). Each entropy gets the Miller-Madow correction,
``H_MM = H_plugin + (m - 1) / (2 N ln 2)`` bits with ``m`` the non-empty cells, so
``MI_MM = H_MM(X) + H_MM(Y) - H_MM(X, Y)``.

Null. Market data are autocorrelated: a regime persists through an episode (a symbol-day or a segment), so
even an output unrelated to the id looks informative when one id covers few episodes. Ids are assigned to
episodes, so the null permutes ids between whole episodes (block permutation), which keeps the
within-episode persistence and the id frequencies and breaks only an episode-id link. The test reports
``excess = MI_MM - mean(null MI_MM)`` (the bias left after Miller-Madow is removed by the null's mean) and the
permutation p-value ``(1 + #{null >= observed}) / (1 + n_permutations)``. A leak is flagged when
``p < alpha`` or ``excess >= max_bits`` (spec: 0.1 bits). With one id per episode the permutation only relabels
and the test has no power; ``audit_leakage`` refuses such data.

Positive control. The same test is run on the same outputs after an injected leak (a fraction of the episodes
emit ``id mod M``); the audit only passes if that control is flagged, i.e. it had the power to see a leak.

Continuous outputs (the 256-d context) are discretised by k-means into ``n_codes`` codes (k-means++ seeding,
Lloyd iterations, seeded); regime indices are used as they are.

Shuffle robustness. A classifier trained on shuffled labels must lose more than half of the skill of one
trained on the true labels, on held-out data; skill is Cohen's kappa (accuracy corrected for chance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LN2 = np.log(2.0)


def _entropy_mm_bits(codes: np.ndarray) -> float:
    counts = np.bincount(codes)
    counts = counts[counts > 0]
    n = counts.sum()
    p = counts / n
    return float(-(p * np.log2(p)).sum() + (len(counts) - 1) / (2 * n * LN2))


def mutual_information_bits(x: np.ndarray, y: np.ndarray) -> float:
    """Miller-Madow-corrected MI (bits) between two non-negative integer code arrays ``[N]``."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise ValueError(f"x and y must be equal-length 1-D code arrays, got {x.shape} and {y.shape}")
    if x.min() < 0 or y.min() < 0:
        raise ValueError("codes must be non-negative integers")
    joint = x.astype(np.int64) * (int(y.max()) + 1) + y
    return _entropy_mm_bits(x) + _entropy_mm_bits(y) - _entropy_mm_bits(joint)


def _sq_dist(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``||x - c||^2`` for all pairs ``[N, C]`` without an ``[N, C, D]`` temporary."""
    d2 = (x**2).sum(1)[:, None] - 2.0 * x @ centres.T + (centres**2).sum(1)[None]
    return np.maximum(d2, 0.0)


def kmeans_codes(x: np.ndarray, n_codes: int = 8, iters: int = 25, seed: int = 0) -> np.ndarray:
    """``x [N, D]`` -> k-means code per row ``[N]`` (k-means++ seeding, Lloyd iterations)."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    centres = x[[rng.integers(len(x))]]
    for _ in range(1, n_codes):
        d2 = _sq_dist(x, centres).min(axis=1)  # [N]
        if d2.sum() == 0:
            break  # fewer distinct points than codes
        centres = np.vstack([centres, x[rng.choice(len(x), p=d2 / d2.sum())]])
    for _ in range(iters):
        codes = _sq_dist(x, centres).argmin(axis=1)  # [N]
        for c in range(len(centres)):
            if np.any(codes == c):
                centres[c] = x[codes == c].mean(axis=0)
    return _sq_dist(x, centres).argmin(axis=1)


def discretize(outputs: np.ndarray, n_codes: int = 8, seed: int = 0) -> np.ndarray:
    """Integer outputs ``[N]`` (e.g. the emitted regime) as they are; continuous ``[N, D]`` -> k-means codes."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 1 and np.issubdtype(outputs.dtype, np.integer):
        return outputs.astype(np.int64)
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    if outputs.ndim != 2 or not np.all(np.isfinite(outputs)):
        raise ValueError(f"outputs must be [N] integer codes or finite [N, D], got {outputs.shape}")
    return kmeans_codes(outputs, n_codes, seed=seed)


@dataclass(frozen=True)
class MiTest:
    mi_bits: float  # Miller-Madow corrected
    null_mean_bits: float  # mean of the block-permutation null
    excess_bits: float  # mi_bits - null_mean_bits
    p_value: float
    flagged: bool


@dataclass(frozen=True)
class LeakageReport:
    observed: MiTest
    control: MiTest  # the same test after an injected leak
    n_samples: int
    n_ids: int
    n_episodes: int
    max_bits: float = 0.1

    @property
    def passed(self) -> bool:
        """No leak seen (neither significant nor large), and the test had the power to see the injected one."""
        return not self.observed.flagged and self.control.flagged

    @property
    def within_budget(self) -> bool:
        """The specification's criterion: the excess MI is below ``max_bits`` (a dependence may still be
        statistically detectable on much data), and the test had the power to see the injected leak."""
        return self.observed.excess_bits < self.max_bits and self.control.flagged


def _block_permutation_test(codes, episode_of, episode_id, n_perm, max_bits, alpha, rng) -> MiTest:
    observed = mutual_information_bits(codes, episode_id[episode_of])
    null = np.array(
        [
            mutual_information_bits(codes, episode_id[rng.permutation(len(episode_id))][episode_of])
            for _ in range(n_perm)
        ]
    )
    excess = observed - null.mean()
    p = (1 + np.count_nonzero(null >= observed)) / (1 + n_perm)
    return MiTest(observed, float(null.mean()), float(excess), float(p), bool(p < alpha or excess >= max_bits))


def audit_leakage(
    outputs: np.ndarray,
    ids: np.ndarray,
    episodes: np.ndarray,
    *,
    n_codes: int = 8,
    n_permutations: int = 200,
    max_bits: float = 0.1,
    alpha: float = 0.05,
    control_fraction: float = 0.5,
    seed: int = 0,
) -> LeakageReport:
    """MI(output, id) against a block-permutation null, with a positive control.

    ``outputs`` ``[N]`` integer codes or ``[N, D]`` continuous; ``ids`` ``[N]`` the puzzle id of each sample;
    ``episodes`` ``[N]`` the episode (block) of each sample; every episode must carry a single id.
    """
    ids, episodes = np.asarray(ids), np.asarray(episodes)
    n = len(ids)
    if np.shape(outputs)[0] != n or episodes.shape != (n,) or ids.shape != (n,):
        raise ValueError(
            f"outputs, ids and episodes must share N; got {np.shape(outputs)}, {ids.shape}, {episodes.shape}"
        )
    _, id_code = np.unique(ids, return_inverse=True)
    episode_keys, episode_of = np.unique(episodes, return_inverse=True)
    episode_id = np.zeros(len(episode_keys), dtype=np.int64)
    episode_id[episode_of] = id_code
    if np.any(episode_id[episode_of] != id_code):
        raise ValueError("each episode must carry exactly one id (ids are assigned to episodes)")
    n_ids = int(id_code.max()) + 1
    if n_ids >= len(episode_keys):
        raise ValueError(
            f"{n_ids} ids over {len(episode_keys)} episodes: with one id per episode a block "
            "permutation only relabels and cannot test anything; audit at a coarser id"
        )
    codes = discretize(outputs, n_codes, seed)
    rng = np.random.default_rng(seed)
    observed = _block_permutation_test(codes, episode_of, episode_id, n_permutations, max_bits, alpha, rng)
    leaky_episode = rng.random(len(episode_keys)) < control_fraction  # [E]
    m = int(codes.max()) + 1
    leaked = np.where(leaky_episode[episode_of], id_code % max(m, 2), codes)
    control = _block_permutation_test(leaked, episode_of, episode_id, n_permutations, max_bits, alpha, rng)
    return LeakageReport(observed, control, n, n_ids, len(episode_keys), max_bits)


def cohen_kappa(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """``(p_o - p_e) / (1 - p_e)``: agreement beyond what the marginals give by chance (0 = chance, 1 = perfect)."""
    p_o = np.mean(y_true == y_pred)
    p_e = float(np.dot(np.bincount(y_true, minlength=n_classes), np.bincount(y_pred, minlength=n_classes))) / (
        len(y_true) ** 2
    )
    return float((p_o - p_e) / (1 - p_e)) if p_e < 1 else 0.0


@dataclass(frozen=True)
class ShuffleReport:
    kappa_true: float
    kappa_shuffled: float

    @property
    def skill_drop(self) -> float:
        """Share of the true-label skill lost when training on shuffled labels."""
        return 1.0 - self.kappa_shuffled / self.kappa_true if self.kappa_true > 0 else 0.0

    @property
    def passed(self) -> bool:
        return self.kappa_true > 0 and self.skill_drop > 0.5


def shuffle_robustness(
    fit: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    seed: int = 0,
) -> ShuffleReport:
    """``fit(x, y) -> predict``; train on true and on permuted labels, compare held-out kappa."""
    rng = np.random.default_rng(seed)
    true_kappa = cohen_kappa(y_test, fit(x_train, y_train)(x_test), n_classes)
    shuffled_kappa = cohen_kappa(y_test, fit(x_train, rng.permutation(y_train))(x_test), n_classes)
    return ShuffleReport(true_kappa, shuffled_kappa)
