"""JSON Schema files for downstream consumers, generated from the pydantic models (never edited by hand)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.records import ContextRecord, DeadLetter, FeatureRecord
from schemas.ticks import TICK_ADAPTER, Quote, Reference, Status, Trade

SCHEMA_DIR = Path(__file__).parent / "json"

_MODELS: dict[str, TypeAdapter[Any]] = {
    "tick": TICK_ADAPTER,
    "trade": TypeAdapter(Trade),
    "quote": TypeAdapter(Quote),
    "reference": TypeAdapter(Reference),
    "status": TypeAdapter(Status),
    "feature_record": TypeAdapter(FeatureRecord),
    "context_record": TypeAdapter(ContextRecord),
    "dead_letter": TypeAdapter(DeadLetter),
}


def render_schemas() -> dict[str, str]:
    """File name -> JSON text of every exported schema."""
    return {
        f"{name}.schema.json": json.dumps(adapter.json_schema(), indent=2, sort_keys=True) + "\n"
        for name, adapter in _MODELS.items()
    }


def export_schemas(out_dir: Path = SCHEMA_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written
