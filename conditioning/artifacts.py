"""Model directory: everything needed to rebuild a ConditioningSystem, and a manifest that guards it.

Layout of a model directory::

    manifest.json        versions, feature layout, config (full) + its hash, data fingerprint, parameter counts,
                         sha256 of every other file
    model.safetensors    ConditioningSystem.state_dict() (all components, whatever the flags)
    normalizer.json      the feature normaliser's to_dict()
    patterns/            PatternRAG.save_library(): patterns.npz (format 3; format 2 adds patterns.hnsw)

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

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from conditioning.config import ConditioningConfig
from conditioning.features.normalize import FeatureNormalizer
from conditioning.manifest import (  # noqa: F401 - re-exported: the artifacts' public names
    MANIFEST_FORMAT,
    MODEL_FILES,
    RUNTIME_SETTINGS,
    ArtifactMismatchError,
    _expect,
    config_hash,
    file_hashes,
    verify_model,
)
from conditioning.system import ConditioningSystem
from schemas.layout import FEATURE_LAYOUT_VERSION


def parameter_counts(system: ConditioningSystem) -> dict[str, int]:
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in system.named_children()}
    return {**counts, "total": sum(counts.values())}


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
