"""Realized measures against independent oracles: explicit subsample averaging, Gaussian unbiasedness."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conditioning.features.realized import (
    bipower_variation,
    choose_tsrv_k,
    realized_measures,
    tsrv,
)


def _tsrv_by_subsampling(y: np.ndarray, k: int) -> float:
    """ZMA 2005 eq. 55 spelt out: average the RVs of the K offset subgrids, then eq. 64's adjustment."""
    n = len(y) - 1
    sub_rvs = [np.sum(np.diff(y[offset::k]) ** 2) for offset in range(k)]
    avg = float(np.mean(sub_rvs))
    n_bar = (n - k + 1) / k
    return (avg - n_bar / n * float(np.sum(np.diff(y) ** 2))) / (1 - n_bar / n)


@pytest.mark.parametrize("k", [2, 3, 7, 25])
def test_tsrv_equals_explicit_subsample_average(k: int) -> None:
    rng = np.random.default_rng(k)
    y = np.cumsum(rng.normal(0, 1e-3, 2_001)) + rng.normal(0, 5e-4, 2_001)
    assert tsrv(y, k) == pytest.approx(_tsrv_by_subsampling(y, k), rel=1e-12)


def test_bpv_is_unbiased_for_gaussian_returns() -> None:
    # With the n/(n-1) factor E[BPV] = n sigma^2 exactly for i.i.d. N(0, sigma^2) returns (BN-S 2004).
    rng = np.random.default_rng(1)
    n, sigma, reps = 12, 0.01, 40_000
    r = rng.normal(0, sigma, (reps, n))
    bpv = np.array([bipower_variation(row) for row in r])
    se = bpv.std(ddof=1) / math.sqrt(reps)
    assert abs(bpv.mean() - n * sigma**2) < 4 * se
    # Without the factor the bias, n sigma^2 / n, is several standard errors: the test can tell them apart.
    assert abs(bpv.mean() * (n - 1) / n - n * sigma**2) > 4 * se


def test_choose_k_matches_zma_optimum() -> None:
    # ZMA design: noise var 2.5e-7, IV 1.59e-4, n 23,400 -> K ~ 25 (docs/reference.md); RV_all ~ IV + 2n noise var
    n, noise_var, iv = 23_400, 2.5e-7, 1.59e-4
    k, fallback = choose_tsrv_k(n, iv + 2 * n * noise_var, iv)
    assert not fallback
    assert 23 <= k <= 27


def test_choose_k_falls_back_when_pilot_not_positive() -> None:
    k, fallback = choose_tsrv_k(1_000, 1e-3, -1e-6)
    assert fallback and k == round(1_000 ** (2 / 3))


@pytest.mark.parametrize("n_prices", [0, 1, 2, 5, 10])
def test_too_few_observations_give_nan_and_flag(n_prices: int) -> None:
    m = realized_measures(np.linspace(4.0, 4.01, n_prices))
    assert math.isnan(m.rv) and math.isnan(m.bpv) and math.isnan(m.tsrv)
    assert "few_obs" in m.flags


def test_constant_prices_give_zero_variances_without_warnings() -> None:
    m = realized_measures(np.full(100, math.log(50.0)))
    assert (m.rv, m.bpv, m.tsrv) == (0.0, 0.0, 0.0)
    assert math.isnan(m.jump_z)


def test_fixed_k_too_large_leaves_only_tsrv_undefined() -> None:
    m = realized_measures(np.cumsum(np.full(21, 1e-3)), k=15)
    assert math.isnan(m.tsrv) and "few_obs_tsrv" in m.flags and m.rv > 0


def test_fixed_k_below_two_is_an_error() -> None:
    with pytest.raises(ValueError, match="k must be >= 2"):
        realized_measures(np.zeros(50), k=1)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(20, 400),
    shift=st.floats(-10, 10),
    scale=st.floats(0.1, 10),
)
def test_shift_and_scale_invariance(seed: int, n: int, shift: float, scale: float) -> None:
    # Adding a constant to log prices (a price rescaling) changes nothing; scaling returns by a scales the
    # variances by a^2 and leaves K and the jump statistic unchanged.
    rng = np.random.default_rng(seed)
    y = np.cumsum(rng.normal(0, 1e-3, n)) + rng.normal(0, 2e-4, n)
    base = realized_measures(y)
    moved = realized_measures(scale * y + shift)
    assert moved.tsrv_k == base.tsrv_k
    for a, b in ((moved.rv, base.rv), (moved.bpv, base.bpv), (moved.tsrv, base.tsrv)):
        assert a == pytest.approx(scale**2 * b, rel=1e-6, abs=1e-12 * scale**2)
    assert moved.jump_z == pytest.approx(base.jump_z, rel=1e-6, abs=1e-9)
