"""ConditioningSystem: budgets, every flag combination, fail-open vs fail-closed, no ids, latency sanity."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from conditioning import ConditioningConfig, ConditioningSystem, FiLMLayer, RagUnavailableError

from .conftest import clustered_vectors, count_parameters, make_patterns

FLAGS = list(itertools.product([False, True], repeat=4))  # regime, rag, hybrid, fail_open


def make_system(rng, regime, rag, hybrid, fail_open, library=200) -> ConditioningSystem:
    cfg = ConditioningConfig(
        enable_regime=regime,
        enable_rag=rag,
        enable_hybrid=hybrid,
        fail_open=fail_open,
        rag={"max_patterns": 1_000, "timeout_ms": 500},
    )
    torch.manual_seed(0)
    system = ConditioningSystem(cfg).eval()
    # As after training: the gate is no longer a constant 0.5 and FiLM no longer the identity.
    for p in [*system.fusion.up.parameters(), system.film_layer.up.weight]:
        torch.nn.init.normal_(p, std=0.5)
    if library:
        system.pattern_rag.update_pattern_library(make_patterns(clustered_vectors(rng, library)))
    return system


def regime_part(system: ConditioningSystem, x: dict[str, torch.Tensor], probs: torch.Tensor) -> torch.Tensor:
    """The regime part of the context as the module table defines it: the state head on the regime features,
    their probabilities and the pattern."""
    return system.state_context(x["regime_features"], probs, x["pattern_features"])


def inputs(rng, batch=6) -> dict[str, torch.Tensor]:
    return {
        "regime_features": torch.from_numpy(rng.standard_normal((batch, 20)).astype(np.float32)),
        "pattern_features": torch.from_numpy(rng.standard_normal((batch, 128)).astype(np.float32)),
    }


def test_total_conditioning_budget():
    system = ConditioningSystem(ConditioningConfig())
    counts = {name: count_parameters(m) for name, m in system.named_children()}
    assert counts == {
        "regime_classifier": 20_232,
        "state_head": (147 * 128 + 128) + (128 * 256 + 256),  # [x 10 (no volume profile), p 8, pattern 128, d 1]
        "pattern_rag": 17_088,
        "fusion": (512 * 32 + 32) + (32 * 256 + 256),
        "film_layer": 81_920,
    }
    assert all(c <= 100_000 for c in counts.values())
    assert count_parameters(system) == sum(counts.values()) == 196_072 <= 300_000


@pytest.mark.parametrize(("regime", "rag", "hybrid", "fail_open"), FLAGS)
def test_every_flag_combination_is_a_defined_path(rng, regime, rag, hybrid, fail_open):
    system = make_system(rng, regime, rag, hybrid, fail_open)
    x = inputs(rng)
    out = system.condition(x)
    assert out.context.shape == (6, 256) and torch.isfinite(out.context).all()
    assert out.rag_status == ("ok" if rag else "disabled")
    assert (out.regime_probs is not None) == regime
    with torch.no_grad():
        regime_ctx = regime_part(system, x, torch.softmax(system.regime_classifier(x["regime_features"]), -1))
        rag_ctx = system.pattern_rag(x["pattern_features"], timeout_ms=500)
    if not regime and not rag:
        expected = torch.zeros(6, 256)
    elif not rag:
        expected = regime_ctx
    elif not regime:
        expected = rag_ctx
    elif hybrid:
        expected = system.fusion(regime_ctx, rag_ctx)
        assert not torch.allclose(expected, regime_ctx + rag_ctx)  # a gate, not the sum
    else:
        expected = regime_ctx + rag_ctx
    torch.testing.assert_close(out.context, expected)
    torch.testing.assert_close(system(x), out.context)  # forward == condition's context
    # The neutral path makes FiLM exactly the identity.
    tokens = torch.randn(6, 3, 512)
    film_out = system.film_layer(tokens, out.context)
    assert torch.equal(film_out, tokens) == (not regime and not rag)


@pytest.mark.parametrize(("regime", "hybrid"), list(itertools.product([False, True], repeat=2)))
def test_rag_timeout_fail_open_falls_back_to_the_regime_part(rng, regime, hybrid):
    system = make_system(rng, regime, True, hybrid, fail_open=True)
    system.pattern_rag._knn = lambda *a, **k: time.sleep(1.0)  # a stuck index
    x = inputs(rng)
    t0 = time.perf_counter()
    out = system.condition(x)
    assert time.perf_counter() - t0 < 0.5 + 0.3  # the deadline (timeout_ms = 500), not the 1 s search
    assert out.rag_status == "timeout"
    expected = regime_part(system, x, out.regime_probs) if regime else torch.zeros(6, 256)
    torch.testing.assert_close(out.context, expected)


@pytest.mark.parametrize(("regime", "hybrid"), list(itertools.product([False, True], repeat=2)))
def test_rag_failure_raises_when_fail_open_is_false(rng, regime, hybrid):
    system = make_system(rng, regime, True, hybrid, fail_open=False)

    def broken(*args, **kwargs):
        raise RuntimeError("index exploded")

    system.pattern_rag._knn = broken
    with pytest.raises(RagUnavailableError, match="error") as info:
        system.condition(inputs(rng))
    assert "exploded" in str(info.value.__cause__)
    system.pattern_rag._knn = lambda *a, **k: time.sleep(1.0)
    with pytest.raises(RagUnavailableError, match="timeout"):
        system(inputs(rng))


@pytest.mark.parametrize("fail_open", [False, True])
def test_retrieval_not_asked_is_unavailable(rng, fail_open):
    system = make_system(rng, True, True, True, fail_open)
    system.pattern_rag._knn = lambda *a, **k: pytest.fail("the index was queried")
    if not fail_open:
        with pytest.raises(RagUnavailableError, match="unavailable"):
            system.condition(inputs(rng), retrieve=False)
        return
    x = inputs(rng)
    out = system.condition(x, retrieve=False)
    assert out.rag_status == "unavailable"
    torch.testing.assert_close(out.context, regime_part(system, x, out.regime_probs))


@pytest.mark.parametrize("fail_open", [False, True])
def test_empty_library_is_a_cold_start_not_a_failure(rng, fail_open):
    system = make_system(rng, True, True, True, fail_open, library=0)
    x = inputs(rng)
    out = system.condition(x)
    assert out.rag_status == "empty"
    torch.testing.assert_close(out.context, regime_part(system, x, out.regime_probs))


def test_hybrid_rows_without_neighbours_keep_the_regime_part(rng):
    system = make_system(rng, True, True, True, True)
    x = inputs(rng, batch=2)
    late, early = 10**18, 0  # the first row's window opens after everything is known, the second before
    out = system.condition(x, query_windows=np.array([[late, late + 1], [early, early + 1]]))
    regime_ctx = regime_part(system, x, out.regime_probs)
    assert not torch.allclose(out.context[0], regime_ctx[0])
    torch.testing.assert_close(out.context[1], regime_ctx[1])


def test_system_refuses_ids_and_missing_features(rng):
    system = make_system(rng, True, True, False, True)
    x = inputs(rng)
    with pytest.raises(ValueError, match="puzzle_id"):
        system({**x, "puzzle_id": torch.arange(6)})
    with pytest.raises(ValueError, match="pattern_features"):
        system({"regime_features": x["regime_features"]})
    with pytest.raises(ValueError, match="batch size"):
        system({"regime_features": x["regime_features"], "pattern_features": x["pattern_features"][:3]})
    with pytest.raises(TypeError, match="ConditioningConfig"):
        ConditioningSystem({"enable_regime": True})


def test_context_drives_film_end_to_end(rng):
    """The spec's integration: context -> FiLM params -> modulated L-tokens, with gradients reaching the
    regime classifier (it is trainable through FiLM)."""
    system = make_system(rng, True, False, False, True).train()
    x = inputs(rng)
    context = system(x)
    gamma, beta = system.film_layer.get_params(context)
    assert gamma.shape == beta.shape == (6, 512)
    tokens = torch.randn(6, 4, 512)
    system.film_layer(tokens, context).pow(2).mean().backward()
    assert system.regime_classifier.net[0].weight.grad.abs().sum() > 0
    assert isinstance(system.film_layer, FiLMLayer)


def test_condition_reports_stage_latencies(rng, monkeypatch):
    system = make_system(rng, True, True, True, True)
    retrieve = system.pattern_rag.retrieve

    def slow_retrieve(*args, **kwargs):  # the retrieval stage, and only it, takes at least 250 ms
        time.sleep(0.25)
        return retrieve(*args, **kwargs)

    batch = inputs(rng, batch=64)
    system.condition(batch)  # warm-up: torch's first call is not the figure
    monkeypatch.setattr(system.pattern_rag, "retrieve", slow_retrieve)
    out = system.condition(batch)
    assert out.rag_status == "ok"
    lat = out.latency_ms
    assert set(lat) == {"regime", "rag", "fusion", "total"}
    assert all(v >= 0 for v in lat.values())
    assert lat["rag"] >= 250.0 > max(lat["regime"], lat["fusion"])  # booked to the stage that took it
    assert lat["total"] == pytest.approx(lat["regime"] + lat["rag"] + lat["fusion"], rel=1e-9)


def test_state_head_reads_the_state_but_not_the_volume_profile(rng):
    """The regime part reads the regime features and the pattern themselves (not only the 8 probabilities), but
    not the volume-at-price profile, whose tick-grid aliasing names symbols (system.py, ``STATE_FEATURES``)."""
    system = make_system(rng, True, False, False, True)
    x = inputs(rng)
    probs = torch.softmax(system.regime_classifier(x["regime_features"]), -1)
    with torch.no_grad():
        base = regime_part(system, x, probs)
        profile = x["regime_features"].clone()
        profile[:, 7:17] += 1.0  # volume_profile_0..9
        torch.testing.assert_close(regime_part(system, {**x, "regime_features": profile}, probs), base)
        spread = x["regime_features"].clone()
        spread[:, 17] += 1.0  # log_spread_quoted_rel_tw_rel
        assert not torch.allclose(regime_part(system, {**x, "regime_features": spread}, probs), base)
        assert not torch.allclose(regime_part(system, {**x, "pattern_features": -x["pattern_features"]}, probs), base)
