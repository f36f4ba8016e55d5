"""A model directory whose files differ from its manifest's sha256 is refused at load, naming the file (issue 9).

Without the hashes, four flipped bytes in the weights or the pattern index loaded without error and changed
most contexts, and a truncated file ended in a deserialiser's traceback. Each damaged copy of the shipped
model here is first shown to be damaged the way the issue describes (the deserialisers accept the flipped
bytes), then refused by ``load_model``, ``hrmcond replay`` and ``hrmcond run``: exit 2, one line on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conditioning.artifacts import MODEL_FILES, ArtifactMismatchError, load_model
from conditioning.config import ConditioningConfig
from conditioning.rag import PatternRAG
from conditioning.sim.market import MarketConfig, simulate_market
from flows.cli import main
from flows.config import DEFAULT_MODEL_DIR
from schemas.canonical import write_ticks


def flip(path: Path, offset: int, n: int = 4) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + n] = bytes(b ^ 0xFF for b in data[offset : offset + n])
    path.write_bytes(bytes(data))


def weights_offset(path: Path) -> int:
    """An offset inside the tensor data of a safetensors file (after its u64 length + JSON header)."""
    (header_len,) = struct.unpack_from("<Q", path.read_bytes(), 0)
    return 8 + header_len + 1_000


@pytest.fixture
def copy(tmp_path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, out)
    return out


def damage(model: Path, case: str) -> str:
    """Damage ``model`` as ``case`` says, prove the damage is what the issue describes, return the file's name."""
    how, name = case.split(":")
    path = model / name
    before = path.read_bytes()
    if how == "flip" and name == "model.safetensors":
        flip(path, weights_offset(path))
        # Silent without the hashes: the weights deserialise, with other values.
        original, flipped = load_file(str(DEFAULT_MODEL_DIR / name)), load_file(str(path))
        assert any(not torch.equal(original[k], flipped[k]) for k in original)
    elif how == "flip":  # the library: a zip member's CRC would catch flipped bytes, so a valid file, changed
        with np.load(path) as saved:
            arrays = {key: saved[key] for key in saved.files}
        arrays["unit"][len(arrays["unit"]) // 2] *= -1  # one stored vector turned round (still a unit vector)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        # Silent without the hashes: the library loads, with one stored vector changed.
        cfg = ConditioningConfig()
        original, flipped = (
            PatternRAG(cfg.rag.pattern_dim, cfg.film.context_dim, max_patterns=cfg.rag.max_patterns) for _ in range(2)
        )
        original.load_library(DEFAULT_MODEL_DIR / "patterns")
        flipped.load_library(model / "patterns")
        assert not (original._unit == flipped._unit).all()
        original.close()
        flipped.close()
    else:
        path.write_bytes(before[: len(before) // 2])
    assert path.read_bytes() != before
    return name


FLIPS = ["flip:model.safetensors", "flip:patterns/patterns.npz"]
#: The shipped model's files (a format-3 library has no patterns.hnsw: its manifest records it as missing).
TRUNCATIONS = [f"truncate:{name}" for name in (*MODEL_FILES, "manifest.json") if (DEFAULT_MODEL_DIR / name).exists()]


def test_the_shipped_model_carries_a_hash_per_file():
    manifest = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(MODEL_FILES)
    assert load_model(DEFAULT_MODEL_DIR).manifest == manifest


@pytest.mark.parametrize("case", FLIPS + TRUNCATIONS)
def test_load_model_refuses_a_damaged_file(copy, case):
    assert load_model(copy).system.pattern_rag.size > 0  # the intact copy loads
    name = damage(copy, case)
    with pytest.raises(ArtifactMismatchError, match=name.replace(".", r"\.")) as info:
        load_model(copy)
    assert "\n" not in str(info.value)


def test_a_missing_file_is_named(copy):
    (copy / "normalizer.json").unlink()
    with pytest.raises(ArtifactMismatchError, match=r"normalizer\.json is missing"):
        load_model(copy)


@pytest.fixture(scope="module")
def ticks(tmp_path_factory) -> Path:
    market = simulate_market(MarketConfig(n_symbols=2, seed=1, trades_per_day=200, scenarios=False))
    path = tmp_path_factory.mktemp("ticks") / "ticks.parquet"
    write_ticks(market.ticks, path)
    return path


def commands(ticks: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "replay": ["replay", "--format", "canonical", "--ticks", str(ticks), "--out", str(tmp_path / "c.jsonl")],
        # Refused before it connects: nothing listens on port 1.
        "run": ["run", "--until-eof"],
    }


@pytest.mark.parametrize("command", ["replay", "run"])
@pytest.mark.parametrize("case", FLIPS + TRUNCATIONS)
def test_cli_refuses_a_damaged_model_in_one_line(copy, ticks, tmp_path, monkeypatch, capsys, command, case):
    name = damage(copy, case)
    monkeypatch.setenv("HRMCOND__MODEL__DIR", str(copy))
    monkeypatch.setenv("HRMCOND__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with pytest.raises(SystemExit) as exit_:
        main(commands(ticks, tmp_path)[command])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2
    assert err.startswith(f"hrmcond {command}: ") and err.count("\n") == 1 and name in err, err
    assert not (tmp_path / "c.jsonl").exists()


@pytest.mark.parametrize("command", ["replay", "run"])
def test_cli_process_exits_2_without_a_traceback(copy, ticks, tmp_path, command):
    """The real process: its whole stderr is the one line."""
    damage(copy, FLIPS[0])
    env = {**os.environ, "HRMCOND__MODEL__DIR": str(copy), "HRMCOND__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *commands(ticks, tmp_path)[command]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"{copy / 'model.safetensors'} does not match the manifest" in done.stderr
