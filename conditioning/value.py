"""Training the conditioning with the reference HRM (conditioning/reference_hrm.py) from a data set written by
``hrmcond dataset`` (flows/dataset.py), and scoring it: what ``hrmcond train-conditioning`` and ``make
evaluate`` run.

Samples. A row with a context and both targets whose session has ``seq_len`` bars up to it; its input is the
tokens of those bars (standardised by the training rows' mean and std), its targets the forward log realised
variance (standardised likewise) and the direction (1 when ``fwd_log_return > 0``).

Loss. ``MSE(rv) + BCE(direction)`` (both order 1 at the start). AdamW, cosine decay, gradient norm clipped at 1.

Conditioning (mode ``film``). The context is ``ConditioningSystem.fuse`` of the recorded inputs, the same
function the live path runs (parity: tests/conditioning/test_value.py); the regime classifier is frozen (it is
trained on its own labels, conditioning/train.py), everything after it is trained jointly with the HRM:
the state head (regime features, probabilities and pattern -> context), the RAG head, the fusion gate and FiLM.

Raw inputs (mode ``raw`` and the HAR baselines): ``RAW_NAMES``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from conditioning.reference_hrm import HrmSize, ReferenceHRM
from conditioning.system import ConditioningSystem

HAR_NAMES = ("trail_log_rv_5", "trail_log_rv_30", "trail_log_rv_day")


@dataclass(frozen=True)
class TrainSettings:
    seq_len: int = 8
    steps: int = 600
    batch: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.01
    seed: int = 0
    size: HrmSize = field(default_factory=HrmSize)


@dataclass
class Data:
    """A data set as arrays (flows/dataset.py ``DATASET_SCHEMA``), rows in (symbol, date, bar) order."""

    symbol: np.ndarray  # [N] str
    date: np.ndarray  # [N] str
    bar: np.ndarray  # [N] int
    tokens: np.ndarray  # [N, 5]
    har: np.ndarray  # [N, 3]
    fwd_log_rv: np.ndarray  # [N], NaN past the close
    fwd_log_return: np.ndarray  # [N]
    has_context: np.ndarray  # [N] bool
    regime_features: np.ndarray  # [N, 20], 0 without a context
    pattern: np.ndarray  # [N, 128]
    regime_probs: np.ndarray  # [N, 8]
    rag_summary: np.ndarray  # [N, 6], 0 without a RAG part
    has_rag: np.ndarray  # [N] bool
    context: np.ndarray  # [N, 256] as emitted

    def __len__(self) -> int:
        return len(self.symbol)

    @property
    def episode(self) -> np.ndarray:
        return np.char.add(np.char.add(self.symbol.astype(str), "@"), self.date.astype(str))

    def samples(self, seq_len: int) -> np.ndarray:
        """Row indices usable as samples (module docstring)."""
        ok = self.has_context & np.isfinite(self.fwd_log_rv) & np.isfinite(self.fwd_log_return)
        return np.flatnonzero(ok & (self.bar >= seq_len))

    def raw_inputs(self, rows: np.ndarray) -> np.ndarray:
        """``[n, 20 + 8 + 6 + 1 + 128 + 3]``: normalised regime features, probabilities, retrieval summary and
        whether there is one, the pattern, HAR's trailing log variances: every input the conditioning reads."""
        return np.concatenate(
            [
                self.regime_features[rows],
                self.regime_probs[rows],
                self.rag_summary[rows],
                self.has_rag[rows, None].astype(np.float32),
                self.pattern[rows],
                self.har[rows],
            ],
            axis=1,
        ).astype(np.float32)


def _matrix(table, name: str, dim: int) -> np.ndarray:
    col = table.column(name).combine_chunks()
    valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    out = np.zeros((len(col), dim), dtype=np.float32)
    if valid.any():
        flat = col.drop_null().flatten().to_numpy(zero_copy_only=False)
        out[valid] = np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    return out


def load_data(paths: Sequence[str | Path]) -> Data:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p) for p in paths])
    summary_null = np.asarray(table.column("rag_summary").is_null().to_numpy(zero_copy_only=False), dtype=bool)

    def floats(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    return Data(
        symbol=np.asarray(table.column("symbol").to_pylist()),
        date=np.asarray(table.column("date").to_pylist()),
        bar=np.asarray(table.column("bar").to_numpy(), dtype=np.int64),
        tokens=_matrix(table, "tokens", 5),
        har=np.stack([floats(n) for n in HAR_NAMES], axis=1).astype(np.float32),
        fwd_log_rv=floats("fwd_log_rv"),
        fwd_log_return=floats("fwd_log_return"),
        has_context=np.asarray(table.column("has_context").to_numpy(zero_copy_only=False), dtype=bool),
        regime_features=_matrix(table, "regime_features", 20),
        pattern=_matrix(table, "pattern", 128),
        regime_probs=_matrix(table, "regime_probs", 8),
        rag_summary=_matrix(table, "rag_summary", 6),
        has_rag=~summary_null,
        context=_matrix(table, "context", 256),
    )


@dataclass
class Scaler:
    """Per-feature ``(x - mean) / std`` fitted on training rows."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        x = x.reshape(-1, x.shape[-1])
        return cls(x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


@dataclass
class Fitted:
    """A trained reference HRM with its conditioning (mode film) and the training split's scalers."""

    mode: str
    model: ReferenceHRM
    system: ConditioningSystem | None
    tokens: Scaler
    raw: Scaler
    rv_mean: float
    rv_std: float
    symbol_ids: dict[str, int]
    losses: list[float]


def windows(data: Data, rows: np.ndarray, seq_len: int) -> np.ndarray:
    """Token windows ``[n, seq_len, 5]`` ending at ``rows`` (rows of one session are contiguous)."""
    return data.tokens[rows[:, None] + np.arange(1 - seq_len, 1)]


def contexts(system: ConditioningSystem, data: Data, rows: np.ndarray) -> Tensor:
    """The context of ``rows`` from their recorded inputs: ``ConditioningSystem.fuse``, as live."""
    regime_x = torch.from_numpy(data.regime_features[rows]) if system.enable_regime else None
    probs = None
    if regime_x is not None:
        with torch.no_grad():
            probs = torch.softmax(system.regime_classifier(regime_x), dim=-1)
    pattern = torch.from_numpy(data.pattern[rows])
    summary = torch.from_numpy(data.rag_summary[rows])
    has_rag = torch.from_numpy(data.has_rag[rows])
    return system.fuse(regime_x, probs, pattern, summary, has_rag if system.enable_rag else None, len(rows))


def _forward(fit: Fitted, data: Data, rows: np.ndarray, seq_len: int, ctx_rows: np.ndarray | None = None) -> Tensor:
    """Model outputs ``[n, 2]`` for ``rows``; film reads the contexts of ``ctx_rows`` (default ``rows``)."""
    x = torch.from_numpy(fit.tokens(windows(data, rows, seq_len)))
    if fit.mode == "puzzle_emb":
        ids = torch.tensor([fit.symbol_ids.get(s, 0) for s in data.symbol[rows]])
        return fit.model(x, symbol_ids=ids)
    if fit.mode == "raw":
        return fit.model(x, raw=torch.from_numpy(fit.raw(data.raw_inputs(rows))))
    if fit.mode == "film":
        assert fit.system is not None
        ctx = contexts(fit.system, data, rows if ctx_rows is None else ctx_rows)
        film = fit.system.film_layer
        return fit.model(x, film=lambda z: film(z, ctx))
    return fit.model(x)


def train(
    data: Data, rows: np.ndarray, mode: str, settings: TrainSettings, system: ConditioningSystem | None = None
) -> Fitted:
    """Train the reference HRM in ``mode`` on ``rows``; with ``film``, a conditioning system with the classifier
    of ``system`` (frozen) jointly."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    symbols = sorted(set(data.symbol[rows]))
    model = ReferenceHRM(
        data.tokens.shape[1],
        settings.seq_len,
        n_symbols=len(symbols) if mode == "puzzle_emb" else 0,
        raw_dim=data.raw_inputs(rows[:1]).shape[1] if mode == "raw" else 0,
        size=settings.size,
    )
    rv = data.fwd_log_rv[rows]
    fit = Fitted(
        mode=mode,
        model=model,
        system=None,
        tokens=Scaler.fit(data.tokens[rows]),
        raw=Scaler.fit(data.raw_inputs(rows)),
        rv_mean=float(rv.mean()),
        rv_std=float(rv.std()),
        symbol_ids={s: i + 1 for i, s in enumerate(symbols)},
        losses=[],
    )
    params = list(model.parameters())
    if mode == "film":
        if system is None:
            raise ValueError("mode film needs a ConditioningSystem")
        # Fresh (seeded) heads, fusion and FiLM: whatever ``system`` learned before is not carried over, so film
        # and the other modes start equal. Only the classifier comes from ``system``; the library is not needed
        # (the data set holds each row's retrieval summary).
        fit.system = ConditioningSystem(system.config).train()
        fit.system.regime_classifier.load_state_dict(system.regime_classifier.state_dict())
        fit.system.regime_classifier.requires_grad_(False)
        params += [p for p in fit.system.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    model.train()
    for step in range(settings.steps):
        for group in opt.param_groups:  # cosine decay to 0 with a short warm-up
            warm = min(1.0, (step + 1) / 20)
            group["lr"] = settings.lr * warm * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        batch = rows[rng.integers(0, len(rows), settings.batch)]
        out = _forward(fit, data, batch, settings.seq_len)
        rv_z = torch.from_numpy(((data.fwd_log_rv[batch] - fit.rv_mean) / fit.rv_std).astype(np.float32))
        up = torch.from_numpy((data.fwd_log_return[batch] > 0).astype(np.float32))
        loss = F.mse_loss(out[:, 0], rv_z) + F.binary_cross_entropy_with_logits(out[:, 1], up)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        fit.losses.append(loss.item())
    model.eval()
    if fit.system is not None:
        fit.system.eval()
    return fit


@torch.no_grad()
def predict(
    fit: Fitted, data: Data, rows: np.ndarray, seq_len: int, *, shuffle_seed: int | None = None, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted fwd_log_rv [n], P(up) [n])``. ``shuffle_seed`` (film): contexts permuted across ``rows``."""
    ctx_rows = rows if shuffle_seed is None else rows[np.random.default_rng(shuffle_seed).permutation(len(rows))]
    rv, p = [], []
    for start in range(0, len(rows), chunk):
        part = slice(start, start + chunk)
        out = _forward(fit, data, rows[part], seq_len, ctx_rows[part])
        rv.append(out[:, 0].numpy() * fit.rv_std + fit.rv_mean)
        p.append(torch.sigmoid(out[:, 1]).numpy())
    return np.concatenate(rv), np.concatenate(p)


def train_conditioning(datasets: Sequence[str | Path], model_dir: str | Path, config, settings: TrainSettings) -> str:
    """``hrmcond train-conditioning``: train the film mode on every sample of ``datasets`` and write the trained
    conditioning (everything but the frozen classifier and the library) back into ``model_dir``, manifest
    checks and all. Returns a one-line report."""
    from conditioning.artifacts import load_model, save_model
    from conditioning.train import fingerprint

    torch.set_num_threads(1)  # reproducible sums, and the box is shared
    model = load_model(model_dir, config)
    data = load_data(datasets)
    rows = data.samples(settings.seq_len)
    if not len(rows):
        raise ValueError(f"no usable samples in {', '.join(map(str, datasets))}")
    fit = train(data, rows, "film", settings, model.system)
    assert fit.system is not None
    model.system.load_state_dict(fit.system.state_dict())
    first, last = float(np.mean(fit.losses[:20])), float(np.mean(fit.losses[-20:]))
    manifest = model.manifest
    extra = {
        **manifest.get("extra", {}),
        "conditioning_training": {
            "samples": len(rows),
            "steps": settings.steps,
            "seed": settings.seed,
            "seq_len": settings.seq_len,
            "loss_first_20_steps": first,
            "loss_last_20_steps": last,
            "data_fingerprint": fingerprint(data.tokens[rows], data.regime_features[rows], data.rag_summary[rows]),
        },
    }
    save_model(
        model_dir,
        model.system,
        model.normalizer,
        training_fingerprint=manifest["training_fingerprint"],
        extra=extra,
    )
    return f"trained the conditioning on {len(rows):,} samples, loss {first:.3f} -> {last:.3f}; written to {model_dir}"
