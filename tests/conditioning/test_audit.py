"""Leakage audit on synthetic data with known answers, and shuffle robustness of the regime training."""

from __future__ import annotations

import numpy as np
import pytest

from conditioning.audit import audit_leakage, discretize, mutual_information_bits, shuffle_robustness
from conditioning.train import predict, train_classifier


def episodes_data(rng, n_ids=40, episodes_per_id=10, bars=25, regimes=4):
    """Ids assigned to episodes; each episode's regime persists (one flip in ten bars), independent of the id."""
    n_ep = n_ids * episodes_per_id
    episode = np.repeat(np.arange(n_ep), bars)
    ids = np.repeat(rng.permutation(np.repeat(np.arange(n_ids), episodes_per_id)), bars)
    regime = np.repeat(rng.integers(0, regimes, n_ep), bars)
    flip = rng.random(len(regime)) < 0.1
    regime[flip] = rng.integers(0, regimes, flip.sum())
    return regime, ids, episode


def test_mi_matches_the_symmetric_channel_formula(rng):
    """X uniform on 4 symbols, Y = X w.p. 1 - e else one of the 3 others: MI = 2 - H2(e) - e log2(3) bits."""
    e, n = 0.3, 200_000
    x = rng.integers(0, 4, n)
    y = np.where(rng.random(n) < e, (x + rng.integers(1, 4, n)) % 4, x)
    truth = 2 - (-(e * np.log2(e) + (1 - e) * np.log2(1 - e))) - e * np.log2(3)
    assert mutual_information_bits(x, y) == pytest.approx(truth, abs=0.005)


def test_miller_madow_removes_most_of_the_plugin_bias(rng):
    """Independent 4 x 1,000 with 10k samples: plug-in bias ~ (K-1)(M-1)/(2N ln2) = 0.216 bits."""
    x, y = rng.integers(0, 4, 10_000), rng.integers(0, 1_000, 10_000)
    expected_plugin_bias = 999 * 3 / (2 * 10_000 * np.log(2))
    assert expected_plugin_bias == pytest.approx(0.216, abs=1e-3)
    # Miller-Madow removes most of it, not all (cells hold ~2.5 samples each): the block-permutation null's
    # mean is subtracted for the rest (see the audit tests below).
    assert abs(mutual_information_bits(x, y)) < 0.3 * expected_plugin_bias


def test_no_leak_passes_and_the_control_is_caught(rng):
    regime, ids, episode = episodes_data(rng)
    report = audit_leakage(regime, ids, episode, n_permutations=200, seed=1)
    assert report.observed.excess_bits < 0.1
    assert not report.observed.flagged and report.observed.p_value >= 0.05
    # Persistence alone inflates the corrected MI above zero; the block null absorbs it.
    assert report.observed.mi_bits > 0.05 and report.observed.null_mean_bits > 0.05
    assert report.control.flagged
    assert report.passed


def test_an_id_leak_is_flagged(rng):
    regime, ids, episode = episodes_data(rng)
    leaky = np.isin(episode, rng.choice(episode.max() + 1, 60, replace=False))  # 15% of the episodes
    regime = np.where(leaky, ids % 4, regime)
    report = audit_leakage(regime, ids, episode, n_permutations=200, seed=1)
    assert report.observed.flagged and report.observed.p_value < 0.05
    assert not report.passed


def test_continuous_outputs_are_discretised(rng):
    regime, ids, episode = episodes_data(rng)
    centres = rng.standard_normal((4, 16)) * 3
    context = centres[regime] + rng.standard_normal((len(regime), 16))
    codes = discretize(context, n_codes=4)
    assert mutual_information_bits(codes, regime) > 1.5  # k-means recovers the 4 clusters (H = 2 bits)
    assert audit_leakage(context, ids, episode, n_codes=8, n_permutations=100).passed
    id_embedding = rng.standard_normal((ids.max() + 1, 16)) * 3
    leaked = audit_leakage(context + id_embedding[ids], ids, episode, n_codes=8, n_permutations=100)
    assert leaked.observed.flagged


def test_audit_refuses_untestable_designs(rng):
    regime, _, episode = episodes_data(rng)
    with pytest.raises(ValueError, match="one id per episode"):
        audit_leakage(regime, episode, episode)  # a unique id per episode
    with pytest.raises(ValueError, match="exactly one id"):
        audit_leakage(regime, np.arange(len(regime)) % 7, episode)


def test_shuffled_labels_lose_most_of_the_skill(rng):
    n = 2_500
    x = rng.standard_normal((n, 20)).astype(np.float32)
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1], [-1.0, 0.0, 1.0]) + 4 * (x[:, 5] > 1.2)  # 6 classes, learnable

    def fit(xs, ys):
        model = train_classifier(xs, ys, epochs=6, seed=0)
        return lambda xq: predict(model, xq)

    report = shuffle_robustness(fit, x[:2_000], y[:2_000], x[2_000:], y[2_000:], n_classes=8)
    assert report.kappa_true > 0.7
    assert report.skill_drop > 0.5 and report.passed
