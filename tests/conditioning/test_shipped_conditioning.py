"""The shipped model's conditioning is trained (``make model`` -> ``hrmcond train-conditioning``), not left at
its initialisation: FiLM and the fusion gate were the identity / exactly 0.5 for any context before."""

from __future__ import annotations

from pathlib import Path

import torch

from conditioning.artifacts import load_model

MODEL = Path(__file__).resolve().parents[2] / "conditioning" / "pretrained" / "default"


def test_shipped_conditioning_is_trained():
    model = load_model(MODEL)
    system = model.system
    assert system.film_layer.up.weight.abs().max() > 1e-3  # zero-initialised: moved only by training
    assert system.fusion.up.weight.abs().max() > 1e-3
    trained = model.manifest["extra"]["conditioning_training"]
    assert trained["steps"] > 0 and trained["loss_last_20_steps"] < trained["loss_first_20_steps"]
    # A context now changes the L tokens: FiLM is no longer the identity.
    tokens = torch.randn(2, 4, system.film_layer.target_dim)
    context = torch.randn(2, system.film_layer.context_dim)
    assert not torch.allclose(system.film_layer(tokens, context), tokens)
