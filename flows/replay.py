"""The replay graph: a tick table in, deterministic JSON Lines files out."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from flows.config import AppConfig
from flows.sinks import JsonlPartSink, merge_parts
from schemas.reference import ReferenceRow

if TYPE_CHECKING:  # the graph and the models are imported where a flow is built (they pull in torch)
    from bytewax.dataflow import Dataflow

    from flows.contexts import ContextEngine


@dataclass(frozen=True)
class ReplayOutputs:
    contexts: Path | None
    features: Path | None = None
    dead_letters: Path | None = None

    @property
    def dead_letters_path(self) -> Path:
        main = self.contexts or self.features
        assert main is not None, "a replay writes contexts or features"
        return self.dead_letters or main.with_name(main.stem + ".dead-letters.jsonl")

    @property
    def input_size_path(self) -> Path:
        """Where worker 0 of a ``--processes N`` replay leaves the number of input rows for the parent."""
        main = self.dead_letters_path
        return main.with_name(f".{main.name}.input-size")

    def paths(self) -> list[Path]:
        return [p for p in (self.contexts, self.features, self.dead_letters_path) if p is not None]


def build_replay_flow(
    cfg: AppConfig,
    ticks: pa.Table,
    reference: Sequence[ReferenceRow],
    outputs: ReplayOutputs,
    *,
    source_name: str = "ticks",
    engine: ContextEngine | None = None,
) -> Dataflow:
    """Contexts (with ``outputs.contexts``) or, without it, feature records only (no model needed)."""
    from flows.dataflow import Sinks, build_flow
    from flows.sources.table import ReplayInput, TableSource

    for path in outputs.paths():
        path.parent.mkdir(parents=True, exist_ok=True)
    evict = cfg.pipeline.evict_idle_s
    inp = ReplayInput(
        ticks,
        tuple(reference),
        cfg.pipeline.bar_ms * 1_000_000,
        source_name=source_name,
        limits=cfg.pipeline.wire,
        evict_after_ns=None if evict is None else evict * 10**9,
    )
    sinks = Sinks(
        contexts=JsonlPartSink(outputs.contexts) if outputs.contexts else None,
        features=JsonlPartSink(outputs.features) if outputs.features else None,
        dead_letters=JsonlPartSink(outputs.dead_letters_path),
    )
    make_engine = functools.partial(_engine, cfg, engine) if outputs.contexts else None
    return build_flow(cfg, TableSource(inp), sinks, make_engine)


def _engine(cfg: AppConfig, engine: ContextEngine | None) -> ContextEngine:
    """The given engine, else the configured model's, loaded only for a flow that conditions (torch)."""
    from flows.contexts import load_engine

    return engine or load_engine(cfg, deterministic=True)


def finish_replay(outputs: ReplayOutputs) -> dict[str, int]:
    """Merge the workers' part files into the final, ordered outputs; record counts per output."""
    counts = {"dead_letters": merge_parts(outputs.dead_letters_path)}
    if outputs.contexts:
        counts["contexts"] = merge_parts(outputs.contexts)
    if outputs.features:
        counts["features"] = merge_parts(outputs.features)
    return counts
