"""Regime training with held-out evaluation, pattern library building, model artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conditioning.artifacts import ArtifactMismatchError, load_model, save_model
from conditioning.config import ConditioningConfig
from conditioning.features.normalize import FeatureNormalizer
from conditioning.labels import EvidenceRules
from conditioning.regime import REGIME_INDEX
from conditioning.system import ConditioningSystem
from conditioning.train import build_pattern_library, fit_regime_classifier
from schemas.layout import PATTERN_DIM, REGIME_FEATURE_NAMES

from .conftest import clustered_vectors, make_patterns

COL = {n: i for i, n in enumerate(REGIME_FEATURE_NAMES)}


def raw_features(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Plausible un-normalised 20-d rows (levels as log ratios to a baseline) and their evidence-rule labels
    (flat patterns: no trend or mean-reversion evidence, so the vol, liquidity and restriction rules decide)."""
    raw = np.zeros((n, 20))
    vol = rng.normal(0, 1, n)
    raw[:, COL["log_tsrv_rel"]] = vol + rng.normal(0, 0.1, n)
    raw[:, COL["log_bpv_rel"]] = vol + rng.normal(-0.05, 0.1, n)
    raw[:, COL["log_amihud_rel"]] = rng.normal(0, 1, n)
    state = rng.choice(4, n, p=[0.85, 0.08, 0.05, 0.02])
    raw[np.arange(n), COL["ssr_luld_normal"] + state] = 1.0
    raw[:, COL["volume_profile_0"] : COL["volume_profile_9"] + 1] = rng.dirichlet(np.ones(10), n)
    for name in ("log_spread_quoted_rel_tw_rel", "log_spread_effective_rel_vw_rel", "log_spread_mid_vol_rel"):
        raw[:, COL[name]] = rng.normal(0, 0.5, n)
    raw[rng.random(n) < 0.05, COL["log_tsrv_rel"]] = np.nan  # undefined values stay in training, imputed
    return raw, EvidenceRules().apply(raw, np.zeros((n, PATTERN_DIM)))


def test_fit_regime_classifier_held_out(rng):
    raw, labels = raw_features(rng, 3_000)
    fit = fit_regime_classifier(raw, labels, epochs=15, seed=3, progress=False)
    assert fit.confusion.shape == (8, 8) and fit.confusion.sum() == 600  # the last 20%, in time order
    np.testing.assert_array_equal(fit.confusion.sum(axis=1), np.bincount(labels[2_400:], minlength=8))
    majority = np.bincount(labels[2_400:]).max() / 600
    assert fit.accuracy > majority + 0.2 and fit.kappa > 0.5
    # Restriction regimes come from one-hot inputs: learnt (nearly) perfectly.
    for name in ("ssr_active", "luld_active"):
        i = REGIME_INDEX[name]
        assert fit.confusion[i, i] >= 0.9 * fit.confusion[i].sum()
    # Seeded: a second run gives the same model.
    again = fit_regime_classifier(raw, labels, epochs=15, seed=3, progress=False)
    np.testing.assert_array_equal(fit.confusion, again.confusion)
    assert fit.summary()["training_fingerprint"] == again.fingerprint
    with pytest.raises(ValueError, match="regime indices"):
        fit_regime_classifier(raw, np.full(3_000, 8), progress=False)


def test_build_pattern_library_orders_by_known_time(rng):
    patterns = make_patterns(clustered_vectors(rng, 30))
    lib = build_pattern_library(patterns[::-1], max_patterns=20, progress=False, chunk=7)
    assert lib.size == 20
    r = lib.retrieve(torch.from_numpy(np.stack([p.vector for p in patterns])), timeout_ms=2_000)
    top = r.outcomes[:, 0, 0].astype(int)
    np.testing.assert_array_equal(top[10:], np.arange(10, 30))  # the 20 latest-known survive eviction
    with pytest.raises(ValueError, match="as_of_ns"):
        build_pattern_library(patterns, as_of_ns=patterns[10].outcome_end_ns, progress=False)
    lib.close()


def test_artifacts_round_trip_and_refusals(rng, tmp_path):
    cfg = ConditioningConfig(enable_regime=True, enable_rag=True, enable_hybrid=True, rag={"max_patterns": 500})
    torch.manual_seed(0)
    system = ConditioningSystem(cfg).eval()
    torch.nn.init.normal_(system.fusion.up.weight, std=0.3)
    system.pattern_rag.update_pattern_library(make_patterns(clustered_vectors(rng, 300)))
    raw, _ = raw_features(rng, 200)
    normalizer = FeatureNormalizer.fit(raw)
    manifest = save_model(tmp_path, system, normalizer, training_fingerprint="abc123", extra={"kappa": 0.9})
    assert manifest["parameter_counts"]["total"] == 196_072
    x = {"regime_features": torch.from_numpy(normalizer.transform(raw[:8])), "pattern_features": torch.randn(8, 128)}
    loaded = load_model(tmp_path)
    torch.testing.assert_close(loaded.system.condition(x).context, system.condition(x).context)
    np.testing.assert_array_equal(loaded.normalizer.transform(raw), normalizer.transform(raw))
    assert loaded.manifest["training_fingerprint"] == "abc123"
    # Run-time settings may differ (flags, timeout); the model-defining part may not.
    flags_off = load_model(tmp_path, ConditioningConfig(rag={"max_patterns": 500, "timeout_ms": 10}))
    assert torch.equal(flags_off.system(x), torch.zeros(8, 256))
    with pytest.raises(ArtifactMismatchError, match="config_hash"):
        load_model(tmp_path, ConditioningConfig(rag={"max_patterns": 600}))
    manifest_path = tmp_path / "manifest.json"
    edited = json.loads(manifest_path.read_text())
    edited["feature_layout_version"] += 1
    manifest_path.write_text(json.dumps(edited))
    with pytest.raises(ArtifactMismatchError, match="feature_layout_version.*retrain"):
        load_model(tmp_path)
    edited["feature_layout_version"] -= 1
    edited["parameter_counts"]["film_layer"] += 1
    manifest_path.write_text(json.dumps(edited))
    with pytest.raises(ArtifactMismatchError, match="parameter_counts"):
        load_model(tmp_path)
    with pytest.raises(ArtifactMismatchError, match="no manifest"):
        load_model(tmp_path / "nowhere")
