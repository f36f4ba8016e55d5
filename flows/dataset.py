"""``hrmcond dataset``: one Parquet row per (symbol, bar) with what the conditioning read, the bar's tokens and
forward targets, for training the conditioning with a downstream model (conditioning/value.py).

Conditioning inputs come from the replay path itself (flows/replay.py, with ``emit_conditioning_inputs`` on),
so they are exactly what the live ContextEngine computes for the same ticks (training/serving parity, tested):
the normalised 20-d regime features, the 128-d pattern, the point-in-time retrieval summary and its status,
the regime probabilities, the SSR/LULD state, and the emitted 256-d context.

Tokens and targets come from the ticks on a full regular-session grid of bars (every bar, with or without
ticks; a bar without a context has ``has_context`` false and null conditioning columns). Per bar ``j`` ending at
``e_j`` (``C_j`` the last trade price at or before ``e_j``, ``r_j = log C_j - log C_{j-1}``, 0 before the day's
first trade), the tokens ``TOKEN_NAMES`` are coarse bar data on purpose, what any bar feed gives a model:

- ``log_return`` ``r_j``; ``log_range`` ``log(max(H_j / L_j - 1, 1e-6))`` of the bar's trades (no trade: the floor);
- ``log_volume`` ``log1p(shares)``; ``log_trades`` ``log1p(trades)``;
- ``log_spread`` ``log(max((ask - bid) / mid, 1e-6))`` of the last quote at or before ``e_j``.

Targets, known only after the bar (``HORIZON_BARS = h = 30`` one-minute bars, inside the same session; null
where the horizon passes the close): ``fwd_log_rv = log(sum_{b=j+1..j+h} r_b^2 + 1e-12)`` and ``fwd_log_return
= log C_{j+h} - log C_j`` (its sign is the direction target). HAR inputs (trailing, known at ``e_j``):
``trail_log_rv_{5,30,day}``, the same log sum over the last 5 and 30 bars and since the open.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flows.config import AppConfig
from schemas.canonical import QUOTE, TRADE
from schemas.layout import CONTEXT_DIM, NUM_REGIMES, PATTERN_DIM, REGIME_FEATURE_DIM
from schemas.records import RAG_SUMMARY_DIM, ContextRecord, FeatureRecord
from schemas.reference import ReferenceRow
from schemas.session import XNYS, SessionCalendar, session_day, trading_date

TOKEN_NAMES = ("log_return", "log_range", "log_volume", "log_trades", "log_spread")
HORIZON_BARS = 30
RV_FLOOR = 1e-12
LOG_FLOOR = 1e-6
DATASET_FORMAT = 1


def _vec(name: str, dim: int) -> pa.Field:
    return pa.field(name, pa.list_(pa.float32(), dim))


#: The data set's columns (``DATASET_FORMAT``); the file's metadata records the format and the config.
DATASET_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("date", pa.string(), nullable=False),  # New York trading date, ISO
        pa.field("window_end_ns", pa.int64(), nullable=False),
        pa.field("bar", pa.int32(), nullable=False),  # 1 = the session's first bar
        _vec("tokens", len(TOKEN_NAMES)),
        pa.field("trail_log_rv_5", pa.float32()),
        pa.field("trail_log_rv_30", pa.float32()),
        pa.field("trail_log_rv_day", pa.float32()),
        pa.field("fwd_log_rv", pa.float32()),  # null past the close
        pa.field("fwd_log_return", pa.float32()),  # null past the close
        pa.field("has_context", pa.bool_(), nullable=False),
        _vec("regime_features", REGIME_FEATURE_DIM),  # normalised (the classifier's input)
        _vec("pattern", PATTERN_DIM),
        _vec("regime_probs", NUM_REGIMES),
        _vec("rag_summary", RAG_SUMMARY_DIM),  # null without a RAG part
        pa.field("rag_status", pa.string()),
        pa.field("ssr_luld_state", pa.string()),
        _vec("context", CONTEXT_DIM),  # as emitted
    ]
)


def _log_sum(x: np.ndarray) -> np.ndarray:
    return np.log(x + RV_FLOOR)


def _trailing_sum(sq: np.ndarray, n: int) -> np.ndarray:
    """``out[j] = sum(sq[max(0, j - n + 1) .. j])`` (``n = 0``: since index 0)."""
    c = np.concatenate([[0.0], np.cumsum(sq)])
    j = np.arange(len(sq))
    lo = np.zeros_like(j) if n == 0 else np.maximum(0, j - n + 1)
    return c[j + 1] - c[lo]


def day_bars(
    trade_ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    quote_ts: np.ndarray,
    spread: np.ndarray,
    ends: np.ndarray,
) -> dict[str, np.ndarray]:
    """One symbol-day: ticks (sorted by time) and the session's bar ends ``[J]`` -> tokens ``[J, 5]``, trailing
    and forward columns ``[J]`` (module docstring; NaN where undefined). ``spread`` is each quote's relative
    spread."""
    bar_ns = ends[1] - ends[0] if len(ends) > 1 else 60_000_000_000
    last = np.searchsorted(trade_ts, ends, side="left") - 1  # last trade before each end
    close = np.where(last >= 0, price[np.maximum(last, 0)], np.nan)
    first = close[np.isfinite(close)][0] if np.isfinite(close).any() else 1.0
    close = np.where(np.isfinite(close), close, first)
    logc = np.log(close)
    r = np.diff(logc, prepend=logc[0])
    j = np.searchsorted(ends, trade_ts, side="right")  # bar index of each trade ([e_{j-1}, e_j))
    inside = (j < len(ends)) & (trade_ts >= ends[0] - bar_ns)
    j, p, s = j[inside], price[inside], size[inside]
    n = np.bincount(j, minlength=len(ends)).astype(np.float64)
    vol = np.bincount(j, weights=s, minlength=len(ends))
    hi = np.full(len(ends), -np.inf)
    lo = np.full(len(ends), np.inf)
    np.maximum.at(hi, j, p)
    np.minimum.at(lo, j, p)
    rng = np.where(n > 0, hi / np.where(n > 0, lo, 1.0) - 1.0, 0.0)
    q = np.searchsorted(quote_ts, ends, side="left") - 1
    spr = np.where(q >= 0, spread[np.maximum(q, 0)], np.nan)
    tokens = np.stack(
        [
            r,
            np.log(np.maximum(rng, LOG_FLOOR)),
            np.log1p(vol),
            np.log1p(n),
            np.log(np.maximum(np.nan_to_num(spr, nan=LOG_FLOOR), LOG_FLOOR)),
        ],
        axis=1,
    )
    sq = r * r
    h = HORIZON_BARS
    fwd_rv = np.full(len(ends), np.nan)
    fwd_ret = np.full(len(ends), np.nan)
    if len(ends) > h:
        c = np.concatenate([[0.0], np.cumsum(sq)])
        idx = np.arange(len(ends) - h)
        fwd_rv[idx] = _log_sum(c[idx + h + 1] - c[idx + 1])
        fwd_ret[idx] = logc[idx + h] - logc[idx]
    return {
        "tokens": tokens,
        "trail_log_rv_5": _log_sum(_trailing_sum(sq, 5)),
        "trail_log_rv_30": _log_sum(_trailing_sum(sq, 30)),
        "trail_log_rv_day": _log_sum(_trailing_sum(sq, 0)),
        "fwd_log_rv": fwd_rv,
        "fwd_log_return": fwd_ret,
    }


def session_ends(date: dt.date, bar_ns: int, calendar: SessionCalendar = XNYS) -> np.ndarray:
    """Bar ends of the regular session of ``date``: open + bar, ..., close (int64 ns; none on a closed day)."""
    day = session_day(date, calendar)
    return np.arange(day.open_ns + bar_ns, day.close_ns + 1, bar_ns, dtype=np.int64)


def bar_table(ticks: pa.Table, bar_ns: int) -> dict[str, np.ndarray]:
    """Tokens, trailing and forward columns for every symbol and regular-session day of a canonical tick table,
    rows in (symbol, window_end_ns) order."""
    cols = {n: ticks.column(n).to_numpy(zero_copy_only=False) for n in ("ts_ns", "symbol", "kind", "price", "size")}
    bid = ticks.column("bid").to_numpy(zero_copy_only=False).astype(np.float64)
    ask = ticks.column("ask").to_numpy(zero_copy_only=False).astype(np.float64)
    out: dict[str, list] = {"symbol": [], "date": [], "window_end_ns": [], "bar": []}
    parts: list[dict[str, np.ndarray]] = []
    for sym in sorted(set(cols["symbol"])):
        mine = cols["symbol"] == sym
        ts = cols["ts_ns"][mine].astype(np.int64)
        kind = cols["kind"][mine]
        is_t, is_q = kind == TRADE, kind == QUOTE
        price = cols["price"][mine].astype(np.float64)
        size = cols["size"][mine].astype(np.float64)
        b, a = bid[mine], ask[mine]
        mid = (a + b) / 2
        spread = np.where((mid > 0) & (a >= b), (a - b) / np.where(mid > 0, mid, 1.0), np.nan)
        for date in sorted({trading_date(int(t)) for t in np.unique(ts // 3_600_000_000_000) * 3_600_000_000_000}):
            ends = session_ends(date, bar_ns)
            day = (ts >= ends[0] - bar_ns) & (ts < ends[-1])
            if not (day & is_t).any():
                continue
            t_day, q_day = day & is_t, day & is_q
            parts.append(day_bars(ts[t_day], price[t_day], size[t_day], ts[q_day], spread[q_day], ends))
            out["symbol"] += [sym] * len(ends)
            out["date"] += [date.isoformat()] * len(ends)
            out["window_end_ns"].append(ends)
            out["bar"].append(np.arange(1, len(ends) + 1, dtype=np.int32))
    table = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return {
        "symbol": np.array(out["symbol"]),
        "date": np.array(out["date"]),
        "window_end_ns": np.concatenate(out["window_end_ns"]) if parts else np.zeros(0, np.int64),
        "bar": np.concatenate(out["bar"]) if parts else np.zeros(0, np.int32),
        **table,
    }


def replay_conditioning(
    cfg: AppConfig, ticks: pa.Table, reference: Sequence[ReferenceRow], workdir: Path
) -> tuple[list[ContextRecord], list[FeatureRecord]]:
    """The replay path with the conditioning inputs in the context records: contexts and features, one process."""
    from flows.replay import ReplayOutputs, build_replay_flow, finish_replay
    from flows.runner import run_process

    pipeline = cfg.pipeline.model_copy(update={"emit_conditioning_inputs": True})
    cfg = cfg.model_copy(update={"pipeline": pipeline})
    outputs = ReplayOutputs(workdir / "contexts.jsonl", workdir / "features.jsonl")
    run_process(build_replay_flow(cfg, ticks, reference, outputs))
    finish_replay(outputs)
    assert outputs.contexts is not None and outputs.features is not None
    contexts = [ContextRecord.model_validate_json(x) for x in outputs.contexts.read_bytes().splitlines() if x]
    features = [FeatureRecord.model_validate_json(x) for x in outputs.features.read_bytes().splitlines() if x]
    return contexts, features


def dataset_table(
    bars: dict[str, np.ndarray], contexts: list[ContextRecord], features: list[FeatureRecord]
) -> pa.Table:
    """Join the bar grid with the conditioning of each (symbol, bar end) into ``DATASET_SCHEMA``."""
    n = len(bars["symbol"])
    row = {(s, int(e)): i for i, (s, e) in enumerate(zip(bars["symbol"], bars["window_end_ns"], strict=True))}
    has = np.zeros(n, dtype=bool)
    regime: list[list[float] | None] = [None] * n
    pattern: list[list[float] | None] = [None] * n
    probs: list[list[float] | None] = [None] * n
    summary: list[list[float] | None] = [None] * n
    status: list[str | None] = [None] * n
    ssr: list[str | None] = [None] * n
    context: list[list[float] | None] = [None] * n
    for f in features:
        i = row.get((f.symbol, f.window_end_ns))
        if i is not None:
            pattern[i] = f.pattern
    for c in contexts:
        i = row.get((c.symbol, c.window_end_ns))
        if i is None:
            continue
        if c.inputs is None:
            raise ValueError("context records lack their inputs: replay with pipeline.emit_conditioning_inputs")
        has[i] = True
        regime[i] = c.inputs.regime_features
        summary[i] = c.inputs.rag_summary
        probs[i] = c.regime_probs
        status[i] = c.rag_status
        ssr[i] = c.ssr_luld_state
        context[i] = c.context

    def floats(x: np.ndarray) -> pa.Array:
        return pa.array(np.where(np.isfinite(x), x, np.nan).astype(np.float32), from_pandas=True)

    columns = {
        "symbol": pa.array(bars["symbol"], pa.string()),
        "date": pa.array(bars["date"], pa.string()),
        "window_end_ns": pa.array(bars["window_end_ns"], pa.int64()),
        "bar": pa.array(bars["bar"], pa.int32()),
        "tokens": pa.array(list(bars["tokens"].astype(np.float32)), DATASET_SCHEMA.field("tokens").type),
        **{k: floats(bars[k]) for k in ("trail_log_rv_5", "trail_log_rv_30", "trail_log_rv_day")},
        **{k: floats(bars[k]) for k in ("fwd_log_rv", "fwd_log_return")},
        "has_context": pa.array(has),
        "regime_features": pa.array(regime, DATASET_SCHEMA.field("regime_features").type),
        "pattern": pa.array(pattern, DATASET_SCHEMA.field("pattern").type),
        "regime_probs": pa.array(probs, DATASET_SCHEMA.field("regime_probs").type),
        "rag_summary": pa.array(summary, DATASET_SCHEMA.field("rag_summary").type),
        "rag_status": pa.array(status, pa.string()),
        "ssr_luld_state": pa.array(ssr, pa.string()),
        "context": pa.array(context, DATASET_SCHEMA.field("context").type),
    }
    return pa.table(columns, schema=DATASET_SCHEMA)


def build_dataset(
    cfg: AppConfig, ticks: pa.Table, reference: Sequence[ReferenceRow], out: str | Path, *, model_version: str = ""
) -> pa.Table:
    """Replay ``ticks`` through the conditioning (``cfg.model.dir``) and write the data set to ``out`` (Parquet)."""
    with tempfile.TemporaryDirectory(prefix="hrmcond-dataset-") as tmp:
        contexts, features = replay_conditioning(cfg, ticks, reference, Path(tmp))
    table = dataset_table(bar_table(ticks, cfg.pipeline.bar_ms * 1_000_000), contexts, features)
    meta = {
        b"hrmcond_dataset_format": str(DATASET_FORMAT).encode(),
        b"model_version": model_version.encode(),
        b"token_names": ",".join(TOKEN_NAMES).encode(),
        b"horizon_bars": str(HORIZON_BARS).encode(),
    }
    table = table.replace_schema_metadata(meta)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, compression="zstd")
    return table
