"""The base of every typed model here, wire format or configuration: frozen, and unknown keys are errors
(``extra="forbid"``), so a typo never silently becomes a default."""

from __future__ import annotations

from pydantic import AfterValidator, BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def fixed_at(value: int, why: str) -> AfterValidator:
    """A validator for a setting that looks adjustable but is fixed by a layout or a trained model: any other
    value is rejected at load (the error names the key), not at the first tick or record."""

    def check(v: int) -> int:
        if v != value:
            raise ValueError(f"fixed at {value} {why}")
        return v

    return AfterValidator(check)
