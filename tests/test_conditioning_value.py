"""``make evaluate`` on a reduced setting (benchmarks/conditioning_value.py): the whole loop runs (simulated
market -> hrmcond dataset -> the reference HRM in every mode -> scores), and the trained contexts pass the
leakage checks with their positive controls still caught. The gains themselves need the full run's data and
seeds; their figures are in benchmarks/results/conditioning_value.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reduced_evaluation_runs_and_trained_contexts_do_not_leak(tmp_path):
    out = tmp_path / "value.json"
    argv = [
        # 12 symbols x 3 days = 36 episodes: with 24 the 4-code positive control (id mod 4 on half the episodes)
        # had too few episodes to beat its block-permutation null, whatever the contexts were
        *("--symbols", "12", "--days", "3", "--test-days", "1", "--embargo-days", "1"),
        *("--seeds", "1", "--steps", "8", "--batch", "16", "--boot", "200", "--permutations", "40"),
        *("--threads", "1", "--jobs", "1", "--no-real", "--no-scenarios", "--out-file", str(out)),
    ]
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "conditioning_value.py"), *argv], check=True)
    res = json.loads(out.read_text())
    test = res["test"]
    for mode in ("none", "puzzle_emb", "film", "film_shuffled", "raw", "har", "constant"):
        assert test[mode]["rv_mse"] > 0 and 0 <= test[mode]["dir_accuracy"] <= 1
    assert {"mean", "ci95_lo", "ci95_hi"} <= set(test["film"]["rv_mse_gain_vs_none"])
    assert res["data"]["test_rows"] > 500 and res["data"]["train_rows"] > 500
    leak = res["leakage_trained_context"]
    assert set(leak["audit_by_codebook"]) == {"4", "8", "16", "32"}
    for codes, audit in leak["audit_by_codebook"].items():
        assert audit["control_caught"], f"{codes} codes: the positive control was missed (no power)"
        assert audit["excess_bits"] < 0.1, f"{codes} codes: {audit}"
        assert audit["verdict"] == "no leak", f"{codes} codes: {audit}"
    assert leak["probe_control_accuracy"] > 0.9  # the probe finds an id when there is one
    assert leak["probe_accuracy"] <= leak["probe_chance"] + 0.05 * 2  # 12 symbols, one held-out day: noisy
