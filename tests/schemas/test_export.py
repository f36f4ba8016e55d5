"""The JSON Schema files shipped for consumers are current (regenerate with `make schemas`)."""

from __future__ import annotations

from schemas.export import SCHEMA_DIR, render_schemas


def test_schema_files_are_current():
    rendered = render_schemas()
    on_disk = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.schema.json")}
    stale = sorted(n for n in rendered if on_disk.get(n) != rendered[n])
    extra = sorted(set(on_disk) - set(rendered))
    assert not stale and not extra, f"stale {stale}, orphaned {extra}: run `make schemas`"
