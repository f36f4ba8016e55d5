"""The ZMA (2005) Monte Carlo design reproduces the published bias/RMSE table; BPV is robust to jumps."""

from __future__ import annotations

import pytest

from conditioning.sim.zma import REFERENCE_TABLE, ZmaDesign, jump_study, zma_study

N_DAYS = 500


@pytest.fixture(scope="module")
def study():
    return zma_study(N_DAYS, seed=7)


def test_oracle_k_is_the_papers() -> None:
    assert ZmaDesign().oracle_k() == 25


@pytest.mark.parametrize("name", ["all-tick RV", "5-minute RV", "TSRV"])
def test_rmse_and_bias_match_reference_within_30_percent(study, name: str) -> None:
    ref_bias, ref_rmse = REFERENCE_TABLE[name]
    got = study[name]
    if ref_rmse is not None:
        assert got.rmse == pytest.approx(ref_rmse, rel=0.30)
    if abs(ref_bias) > 5 * got.bias_se:
        assert got.bias == pytest.approx(ref_bias, rel=0.30)
    else:
        # TSRV: the reference bias (-3.5e-7) is below one Monte Carlo s.e. (~4e-7 at 500 days), so +-30% is
        # not testable; check instead that our bias is statistically indistinguishable from it.
        assert abs(got.bias - ref_bias) < 4 * got.bias_se


def test_data_driven_k_is_as_good_as_the_oracle(study) -> None:
    assert study["TSRV (data-driven K)"].rmse == pytest.approx(REFERENCE_TABLE["TSRV"][1], rel=0.30)
    assert abs(study["TSRV (data-driven K)"].bias) < 4 * study["TSRV (data-driven K)"].bias_se


def test_bpv_ignores_jumps_that_rv_absorbs() -> None:
    j = jump_study(N_DAYS, seed=11)
    assert j.jump_qv > 0.1 * j.iv  # the jumps are material
    assert j.bpv == pytest.approx(j.iv, rel=0.10)
    assert j.rv - j.iv == pytest.approx(j.jump_qv, rel=0.10)
