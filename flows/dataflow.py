"""The dataflow: ticks -> validated ticks -> per-symbol bars and features -> contexts (+ features, dead letters).

::

    ticks + heartbeats (Kafka or file) ─┬─ dead letters ────────────────────────────────────────┐
                                        └─ symbol lists ── bars (SymbolLogic) ─┬─ late ticks ──┴─> dead-letter sink
                                                                              └─ BarFeatures + heartbeats ─
                                           one key: infer (InferenceLogic, event-time order) ─ key by symbol ─
                                           regime hysteresis ─┬─> contexts sink
                                                              └─> features sink

Live and replay run this same graph; only the source and the sinks differ. Each source decodes its input
and carries its partitions' event-time clocks as heartbeats (flows/clock.py); nothing downstream reads the
wall clock to decide what a context holds.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink

from conditioning.features.state import BarFeatures
from flows.bars import Heartbeat, Received, SymbolLogic, Tick, TickBlock
from flows.config import AppConfig
from flows.feature_records import feature_record
from flows.metrics import METRICS
from flows.sinks import Keyed
from schemas.records import ContextRecord, DeadLetter, FeatureRecord

if TYPE_CHECKING:  # the models are imported only where a flow conditions (they pull in torch)
    from flows.contexts import ContextEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sinks:
    contexts: DynamicSink | None
    dead_letters: DynamicSink
    features: DynamicSink | None = None


def _count_ticks(
    keyed: tuple[str, list[Tick | Received | Heartbeat | TickBlock]],
) -> tuple[str, list[Tick | Received | Heartbeat | TickBlock]]:
    """A symbol's share of a batch (flows/bars.py ``by_symbol``), counted by kind."""
    kinds: Counter[str] = Counter()
    for item in keyed[1]:
        if isinstance(item, TickBlock):
            trades = int(item.columns.is_trade.sum())
            kinds.update(trade=trades, quote=len(item) - trades)
        elif not isinstance(item, Heartbeat):
            kinds[item.kind] += 1
    for kind, n in kinds.items():
        if n:
            METRICS.ticks.labels(kind).inc(n)
    return keyed


#: Room for the Kafka record's own framing (record batch header, lengths, timestamps) next to key and value.
_RECORD_FRAMING_BYTES = 512


def _dead_letter_out(dl: DeadLetter, max_message_bytes: int) -> Keyed:
    METRICS.dead_letters.labels(dl.reason).inc()
    dl = dl.fit(max_message_bytes - len((dl.key or "").encode()) - _RECORD_FRAMING_BYTES)
    where = dl.source or (f"{dl.topic}:{dl.partition}:{dl.offset:020d}" if dl.offset is not None else "")
    return (dl.key or "", dl.model_dump_json().encode(), f"{where} {dl.reason} {dl.raw_b64}")


def _kept(pair: tuple[ContextRecord, FeatureRecord] | None) -> tuple[ContextRecord, FeatureRecord]:
    assert pair is not None  # evictions (None) were filtered out before
    return pair


def _record_out(record: ContextRecord | FeatureRecord) -> Keyed:
    return (record.symbol, record.model_dump_json().encode(), f"{record.window_end_ns:020d} {record.symbol}")


def build_flow(
    cfg: AppConfig,
    source: Source,
    sinks: Sinks,
    engine: Callable[[], ContextEngine] | None,
    *,
    name: str = "hrm_conditioning",
) -> Dataflow:
    """Wire the graph. ``source`` emits dead letters and, per symbol, lists of decoded ticks and heartbeats
    (flows/sources, flows/bars.py ``by_symbol``). ``engine``
    builds the worker's models (called once, when the flow is built); without one the graph stops at the
    features (training data, which must not need a trained model)."""
    flow = Dataflow(name)
    items = op.input("ticks_in", flow, source)
    split = op.branch("split_dead_in", items, lambda x: isinstance(x, DeadLetter))
    # already keyed: each symbol's ticks of a source batch as one list (flows/bars.py by_symbol)
    keyed = op.map("count_ticks", split.falses, _count_ticks)
    bar_out = op.stateful("bars", keyed, lambda resume: SymbolLogic(cfg.pipeline, resume))
    bar_split = op.branch("split_late", op.key_rm("unkey_bars", bar_out), lambda x: not isinstance(x, DeadLetter))
    dead = op.merge("dead", split.trues, bar_split.falses)
    dead_out = functools.partial(_dead_letter_out, max_message_bytes=cfg.kafka.max_message_bytes)
    op.output("dead_out", op.map("dl_out", dead, dead_out), sinks.dead_letters)
    if engine is None:
        if sinks.features is None:
            raise ValueError("a features-only flow needs a features sink")
        bars = op.filter("drop_heartbeats", bar_split.trues, lambda x: isinstance(x, BarFeatures))
        feats = op.map("feat_only_out", bars, lambda bar: _record_out(feature_record(bar)))
        op.output("features_out", feats, sinks.features)
        return flow
    if sinks.contexts is None:
        raise ValueError("a conditioning flow needs a contexts sink")
    from flows.contexts import InferenceLogic

    ctx_engine = engine()
    one_key = op.key_on("all_bars", bar_split.trues, lambda _: "model")
    drafts = op.key_rm(
        "unkey_model", op.stateful_batch("infer", one_key, lambda resume: InferenceLogic(ctx_engine, resume))
    )
    finished = op.stateful_map("regime_hysteresis", drafts, ctx_engine.finish)
    records = op.filter("drop_evictions", finished, lambda kv: kv[1] is not None)
    contexts = op.map("ctx_out", op.key_rm("unkey_ctx", records), lambda pair: _record_out(_kept(pair)[0]))
    op.output("contexts_out", contexts, sinks.contexts)
    if sinks.features is not None:
        feats = op.map("feat_out", op.key_rm("unkey_feat", records), lambda pair: _record_out(_kept(pair)[1]))
        op.output("features_out", feats, sinks.features)
    return flow
