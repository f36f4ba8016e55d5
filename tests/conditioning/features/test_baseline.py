"""Per-symbol level baselines: the definition, point in time, scale invariance, undefined values."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conditioning.features.baseline import LevelBaseline


def reference(series: np.ndarray, halflife: float) -> np.ndarray:
    """A plain loop over the definition in the module docstring (one feature)."""
    alpha = 1 - 0.5 ** (1 / halflife)
    b, n, out = math.nan, 0, []
    for x in series:
        if not (math.isfinite(x) and x > 0):
            out.append(math.nan)
            continue
        lx = math.log(x)
        n += 1
        if math.isnan(b):
            b = lx
        out.append(lx - b)
        b += max(alpha, 1 / n) * (lx - b)
    return np.array(out)


def test_warm_up_is_the_running_mean():
    base = LevelBaseline(1, 1_000)
    logs = np.log([2.0, 8.0, 4.0, 16.0])
    for x in np.exp(logs):
        base.relative(np.array([x]))
    assert base.log_level[0] == pytest.approx(logs.mean(), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(st.floats(1e-9, 1e3), st.just(math.nan), st.just(0.0), st.just(-1.0)), min_size=1, max_size=60),
    st.floats(0.5, 500),
)
def test_matches_the_definition(xs, halflife):
    base = LevelBaseline(2, halflife)
    x = np.array(xs)
    got = np.array([base.relative(np.array([v, 2 * v]))[0] for v in x])
    np.testing.assert_allclose(got, reference(x, halflife), rtol=1e-12, atol=1e-12)


def test_first_value_is_the_seed_and_the_current_bar_is_not_in_its_own_baseline():
    base = LevelBaseline(1, 10)
    assert base.relative(np.array([5.0]))[0] == 0.0
    rel = base.relative(np.array([50.0]))[0]
    assert rel == math.log(10.0)  # compared with the past only


def test_a_stock_ten_times_as_illiquid_gets_the_same_relative_path():
    rng = np.random.default_rng(0)
    path = np.exp(rng.normal(0, 0.5, 300))
    a, b = LevelBaseline(1, 50), LevelBaseline(1, 50)
    ra = [a.relative(np.array([x]))[0] for x in path]
    rb = [b.relative(np.array([10 * x]))[0] for x in path]
    np.testing.assert_allclose(ra, rb, atol=1e-12)


def test_pickles_mid_stream():
    base = LevelBaseline(3, 20)
    for v in (1.0, 2.0, 4.0):
        base.relative(np.array([v, v, v]))
    clone = pickle.loads(pickle.dumps(base))
    np.testing.assert_array_equal(
        clone.relative(np.array([3.0, 0.0, math.nan])), base.relative(np.array([3.0, 0.0, math.nan]))
    )


def test_without_update_the_baseline_stands_still():
    base = LevelBaseline(1, 5)
    assert math.isnan(base.relative(np.array([3.0]), update=False)[0])  # nothing learnt yet
    base.relative(np.array([3.0]))
    before = base.log_level.copy()
    assert base.relative(np.array([30.0]), update=False)[0] == math.log(10.0)
    np.testing.assert_array_equal(base.log_level, before)
