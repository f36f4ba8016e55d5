"""FeatureNormalizer: fitted offline, JSON round trip, NaN -> mean, one-hot untouched, layout checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conditioning.features.normalize import FeatureNormalizer
from schemas.layout import FEATURE_LAYOUT_VERSION, REGIME_FEATURE_NAMES

IDX = {n: i for i, n in enumerate(REGIME_FEATURE_NAMES)}


def regime_features(rng: np.random.Generator, n: int = 500) -> np.ndarray:
    x = rng.normal(0.3, 0.8, (n, 20))  # log ratios to baselines: any sign
    x[:, 3:7] = np.eye(4)[rng.integers(0, 4, n)]
    x[:, 7:17] = rng.dirichlet(np.ones(10), n)
    x[::11, IDX["log_amihud_rel"]] = np.nan
    return x


def test_fitted_features_are_standardised_and_one_hot_untouched() -> None:
    x = regime_features(np.random.default_rng(0))
    z = FeatureNormalizer.fit(x).transform(x)
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_array_equal(z[:, 3:7], x[:, 3:7])
    others = [i for i in range(20) if not 3 <= i < 7]
    np.testing.assert_allclose(z[:, others].mean(axis=0), 0, atol=0.02)  # NaNs imputed at 0 shift it a bit
    assert np.all(np.isfinite(z))


def test_z_score_matches_definition() -> None:
    x = regime_features(np.random.default_rng(1))
    j = IDX["log_bpv_rel"]
    expected = (x[:, j] - x[:, j].mean()) / x[:, j].std()
    np.testing.assert_allclose(FeatureNormalizer.fit(x).transform(x)[:, j], expected, rtol=1e-5, atol=1e-5)


def test_nan_is_imputed_as_the_mean() -> None:
    x = regime_features(np.random.default_rng(2))
    z = FeatureNormalizer.fit(x).transform(x)
    assert np.all(z[::11, IDX["log_amihud_rel"]] == 0.0)


def test_constant_feature_gets_unit_std() -> None:
    x = regime_features(np.random.default_rng(6))
    x[:, IDX["volume_profile_0"]] = 0.25
    z = FeatureNormalizer.fit(x).transform(x)
    assert np.all(z[:, IDX["volume_profile_0"]] == 0.0)


def test_json_round_trip_and_single_vector() -> None:
    x = regime_features(np.random.default_rng(3))
    norm = FeatureNormalizer.fit(x)
    back = FeatureNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(back.transform(x), norm.transform(x))
    np.testing.assert_array_equal(back.transform(x[5]), norm.transform(x)[5])


def test_other_layout_version_is_refused() -> None:
    d = FeatureNormalizer.fit(regime_features(np.random.default_rng(4))).to_dict()
    d["layout_version"] = FEATURE_LAYOUT_VERSION + 1
    with pytest.raises(ValueError, match="layout version"):
        FeatureNormalizer.from_dict(d)


def test_bad_shapes_and_inf_are_errors() -> None:
    norm = FeatureNormalizer.fit(regime_features(np.random.default_rng(5)))
    with pytest.raises(ValueError, match=r"shape \[N, 20\]"):
        norm.transform(np.zeros((3, 19)))
    bad = np.zeros((2, 20))
    bad[1, 4] = np.inf
    with pytest.raises(ValueError, match="inf"):
        norm.transform(bad)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shift=st.floats(-5, 5), scale=st.floats(1e-2, 1e2))
def test_affine_change_of_a_feature_leaves_its_z_scores_unchanged(seed: int, shift: float, scale: float) -> None:
    x = regime_features(np.random.default_rng(seed), 50)
    y = x.copy()
    j = IDX["log_tsrv_rel"]
    y[:, j] = shift + scale * y[:, j]
    a = FeatureNormalizer.fit(x).transform(x)[:, j]
    b = FeatureNormalizer.fit(y).transform(y)[:, j]
    np.testing.assert_allclose(a, b, atol=1e-4)
