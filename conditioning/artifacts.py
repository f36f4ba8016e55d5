"""Model directory: everything needed to rebuild a ConditioningSystem, and a manifest that guards it.

Layout of a model directory::

    manifest.json        versions, feature layout, config (full) + its hash, data fingerprint, parameter counts,
                         sha256 of every other file
    model.safetensors    ConditioningSystem.state_dict() (all components, whatever the flags)
    normalizer.json      the feature normaliser's to_dict()
    patterns/            PatternRAG.save_library(): patterns.hnsw + patterns.npz

Loading refuses, with ``ArtifactMismatchError`` (one line naming the field or file, the expected and the
found value): another manifest format, a file whose sha256 differs from the manifest's (a flipped byte or a
truncated copy would otherwise load and silently change the contexts, or end in a deserialiser's
traceback), another feature layout version (the 20-d/128-d vectors would mean something else), a config
whose model-defining part hashes differently from the caller's (feature flags, timeout and stability
threshold are run-time settings, outside the hash), or parameter counts that differ from the rebuilt
model's. The hashes are checked before anything is deserialised. Package and torch versions are recorded for
provenance; safetensors makes the weights themselves version-independent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pydantic
import torch
from safetensors.torch import load_file, save_file

from conditioning.config import ConditioningConfig
from conditioning.features.normalize import FeatureNormalizer
from conditioning.system import ConditioningSystem
from schemas.errors import HrmcondError
from schemas.layout import FEATURE_LAYOUT_VERSION

#: 2: the manifest records a sha256 per file (``files``); format 1 had none and is refused.
MANIFEST_FORMAT = 2
#: Every file of a model directory besides the manifest, as the manifest's ``files`` names them.
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


def parameter_counts(system: ConditioningSystem) -> dict[str, int]:
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in system.named_children()}
    return {**counts, "total": sum(counts.values())}


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


def _package_version() -> str:
    try:
        return metadata.version("hrm-conditioning")
    except metadata.PackageNotFoundError:
        return "unknown"


def save_model(
    directory: str | Path,
    system: ConditioningSystem,
    normalizer: FeatureNormalizer,
    *,
    training_fingerprint: str,
    extra: dict | None = None,
) -> dict:
    """Write the model directory; ``extra`` (e.g. label rules, held-out metrics) goes into the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in system.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "normalizer.json").write_text(json.dumps(normalizer.to_dict(), indent=2, sort_keys=True))
    system.pattern_rag.save_library(directory / "patterns")
    manifest = {
        "manifest_format": MANIFEST_FORMAT,
        "package_version": _package_version(),
        "torch_version": torch.__version__,
        "feature_layout_version": FEATURE_LAYOUT_VERSION,
        "config": system.config.model_dump(),
        "config_hash": config_hash(system.config),
        "training_fingerprint": training_fingerprint,
        "parameter_counts": parameter_counts(system),
        "files": file_hashes(directory),
        "extra": extra or {},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


@dataclass
class LoadedModel:
    system: ConditioningSystem
    normalizer: FeatureNormalizer
    manifest: dict


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


def load_model(directory: str | Path, config: ConditioningConfig | None = None) -> LoadedModel:
    """Rebuild the system saved in ``directory`` after ``verify_model``. With ``config`` the saved config
    must hash the same; without, the saved config is used."""
    directory = Path(directory)
    manifest = verify_model(directory, config)
    system = ConditioningSystem(config or ConditioningConfig.model_validate(manifest["config"]))
    _expect(
        "parameter_counts",
        parameter_counts(system),
        manifest.get("parameter_counts"),
        directory,
        "the model architecture changed since this artifact was written: retrain",
    )
    system.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    system.pattern_rag.load_library(directory / "patterns")
    normalizer = FeatureNormalizer.from_dict(json.loads((directory / "normalizer.json").read_text()))
    return LoadedModel(system.eval(), normalizer, manifest)
