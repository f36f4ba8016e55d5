"""The base of every typed model here, wire format or configuration: frozen, and unknown keys are errors
(``extra="forbid"``), so a typo never silently becomes a default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
