"""The model directory's manifest checks: every check ``conditioning.artifacts.load_model`` makes before it
deserialises anything, without torch (a command runs them before it starts any worker, and a parent that only
starts workers need not import torch for them). The layout and what each check guards: conditioning/artifacts.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pydantic

from conditioning.config import ConditioningConfig
from schemas.errors import HrmcondError
from schemas.layout import FEATURE_LAYOUT_VERSION

#: 2: the manifest records a sha256 per file (``files``); format 1 had none and is refused.
MANIFEST_FORMAT = 2
#: Every file of a model directory besides the manifest, as the manifest's ``files`` names them. ``patterns.hnsw``
#: exists in a format-2 library only (conditioning/library.py); a format-3 directory records it as ``missing``.
MODEL_FILES = ("model.safetensors", "normalizer.json", "patterns/patterns.hnsw", "patterns/patterns.npz")


class ArtifactMismatchError(HrmcondError, ValueError):
    """A model directory does not match what the loader expects."""


#: Settings that change behaviour at run time but not the trained model: flipping them needs no retraining,
#: so they are left out of the config hash (the full config is still stored in the manifest).
RUNTIME_SETTINGS: dict[str, bool | set[str]] = {
    "enable_regime": True,
    "enable_rag": True,
    "enable_hybrid": True,
    "fail_open": True,
    "regime": {"stability_threshold"},
    "rag": {"timeout_ms"},
}


def config_hash(config: ConditioningConfig) -> str:
    """sha256 of the canonical JSON of the model-defining part of the config (``RUNTIME_SETTINGS`` excluded)."""
    model_part = config.model_dump(exclude=RUNTIME_SETTINGS)
    return hashlib.sha256(json.dumps(model_part, sort_keys=True).encode()).hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 (hex) of each of ``MODEL_FILES`` in ``directory``; a missing file maps to ``"missing"``."""
    hashes = {}
    for name in MODEL_FILES:
        try:
            with open(directory / name, "rb") as f:
                hashes[name] = hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            hashes[name] = "missing"
    return hashes


def _expect(field: str, expected: Any, found: Any, directory: Path, fix: str) -> None:
    if expected != found:
        raise ArtifactMismatchError(f"{directory}: {field} is {found!r}, expected {expected!r}; {fix}")


def verify_model(directory: str | Path, config: ConditioningConfig | None = None) -> dict:
    """Every check ``load_model`` makes before deserialising anything, without loading: the manifest's
    format, the files' sha256, the feature layout and the config hash (against ``config`` when given).
    Returns the manifest. Cheap (hashing ~11 MB), so a command runs it before it starts any worker."""
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise ArtifactMismatchError(f"{directory}: no manifest.json; not a model directory")
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError: a truncated or corrupted manifest
        raise ArtifactMismatchError(f"{path} is not valid JSON ({err}): restore it or rebuild the model") from None
    if not isinstance(manifest, dict):
        raise ArtifactMismatchError(f"{path} is not a JSON object: restore it or rebuild the model")
    _expect(
        "manifest_format",
        MANIFEST_FORMAT,
        manifest.get("manifest_format"),
        directory,
        "rebuild the model with this version of the package",
    )
    recorded = manifest.get("files") or {}
    for name, found in file_hashes(directory).items():
        want = str(recorded.get(name))
        if found != want:
            what = (
                "is missing"
                if found == "missing"
                else (
                    f"does not match the manifest (sha256 {found[:12]}..., recorded {want[:12]}...): it is corrupted, "
                    "truncated or was replaced"
                )
            )
            raise ArtifactMismatchError(f"{directory / name} {what}; restore the model directory or rebuild it")
    _expect(
        "feature_layout_version",
        FEATURE_LAYOUT_VERSION,
        manifest.get("feature_layout_version"),
        directory,
        "the features changed meaning since training: retrain (hrmcond train-regime, build-patterns)",
    )
    try:
        saved = ConditioningConfig.model_validate(manifest.get("config"))
    except pydantic.ValidationError as err:
        raise ArtifactMismatchError(
            f"{path}: the config is invalid ({err.error_count()} errors): the manifest was edited or corrupted"
        ) from None
    _expect(
        "config_hash",
        config_hash(saved),
        manifest.get("config_hash"),
        directory,
        "the manifest was edited or corrupted",
    )
    if config is not None:
        _expect(
            "config_hash",
            config_hash(config),
            manifest["config_hash"],
            directory,
            "load with the config the model was trained with, or retrain",
        )
    return manifest
