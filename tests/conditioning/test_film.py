"""FiLM: budget, exact identity (fresh, and with a zero context after training), modulation, API shape."""

from __future__ import annotations

import pytest
import torch

from conditioning.film import FiLMLayer

from .conftest import count_parameters


def test_film_parameter_budget():
    film = FiLMLayer(context_dim=256, target_dim=512)
    # (256 + 2 * 512) * 64: two bias-free matrices of the 64-wide bottleneck.
    assert count_parameters(film) == (256 + 1024) * 64 == 81_920
    assert count_parameters(film) <= 100_000


def test_fresh_film_is_identity_for_any_context():
    torch.manual_seed(0)
    film = FiLMLayer(256, 512)
    x = torch.randn(3, 7, 512)
    assert torch.equal(film(x, torch.randn(3, 256)), x)
    gamma, beta = film.get_params(torch.randn(3, 256))
    assert torch.equal(gamma, torch.ones(3, 512)) and torch.equal(beta, torch.zeros(3, 512))


def test_zero_context_is_identity_after_training():
    torch.manual_seed(0)
    film = FiLMLayer(16, 32)
    opt = torch.optim.Adam(film.parameters(), lr=1e-2)
    for _ in range(50):  # learn to double the tokens for a non-zero context: weights become non-zero
        ctx, x = torch.randn(8, 16), torch.randn(8, 4, 32)
        loss = (film(x, ctx) - 2 * x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert film.up.weight.abs().max() > 0.01
    x = torch.randn(5, 4, 32)
    assert not torch.allclose(film(x, torch.randn(5, 16)), x)
    assert torch.equal(film(x, torch.zeros(5, 16)), x)


def test_film_modulation_effect():
    torch.manual_seed(0)
    film = FiLMLayer(256, 512)
    torch.nn.init.normal_(film.up.weight, std=0.05)  # as after training
    x = torch.randn(2, 6, 512)
    ctx = torch.randn(2, 256)
    y = film(x, ctx)
    gamma, beta = film.get_params(ctx)
    assert y.shape == (2, 6, 512)
    assert (y - x).abs().mean() > 1e-2
    torch.testing.assert_close(y, gamma[:, None] * x + beta[:, None])  # the FiLM formula, per channel
    # Each sample is modulated by its own context: swapping contexts swaps outputs.
    torch.testing.assert_close(film(x.flip(0), ctx.flip(0)), y.flip(0))


def test_film_rejects_bad_shapes():
    film = FiLMLayer(256, 512)
    with pytest.raises(ValueError, match=r"\[B, T, 512\]"):
        film(torch.zeros(2, 512), torch.zeros(2, 256))
    with pytest.raises(ValueError, match=r"\[B, 256\]"):
        film(torch.zeros(2, 3, 512), torch.zeros(2, 128))
    with pytest.raises(ValueError, match="batch mismatch"):
        film(torch.zeros(2, 3, 512), torch.zeros(3, 256))
    with pytest.raises(ValueError, match="rank"):
        FiLMLayer(256, 512, rank=0)
