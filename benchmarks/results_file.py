"""Where every benchmark writes its figures: ``benchmarks/results/<name>.json``, pretty-printed."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, result: dict, *, echo: bool = False) -> Path:
    """Write ``result`` to ``benchmarks/results/<name>.json`` (and to stdout with ``echo``); returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    text = json.dumps(result, indent=2) + "\n"
    path.write_text(text)
    if echo:
        print(text, end="")
    return path
