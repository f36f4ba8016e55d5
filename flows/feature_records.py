"""A closed bar's features as the record the features sink writes (schemas/records.py ``FeatureRecord``).

Its own module, apart from the models (flows/contexts.py): a features-only flow (``replay --features-out``,
training data) needs no model and so never imports torch.
"""

from __future__ import annotations

import math

from conditioning.features.state import BarFeatures
from schemas.records import FeatureRecord, MaturedPattern, finite_or_none


def feature_record(bar: BarFeatures) -> FeatureRecord:
    """The record of ``bar``; a matured pattern whose outcome is not finite is left out (nothing to learn).
    Arrays go in as ``tolist()``: one C call instead of a numpy scalar per element, the same floats."""
    return FeatureRecord(
        symbol=bar.symbol,
        window_start_ns=bar.window_start_ns,
        window_end_ns=bar.window_end_ns,
        n_trades=bar.n_trades,
        n_quotes=bar.n_quotes,
        rv=finite_or_none([bar.rv])[0],
        tsrv=finite_or_none([bar.tsrv])[0],
        bpv=finite_or_none([bar.bpv])[0],
        amihud=finite_or_none([bar.amihud])[0],
        ssr_luld_state=bar.ssr_luld_state.name,
        volume_profile=finite_or_none(bar.volume_profile.tolist()),
        spread=finite_or_none(bar.spread.tolist()),
        regime_features=finite_or_none(bar.regime_features.tolist()),
        pattern=bar.pattern.tolist(),  # float32 -> float, exactly
        matured=[
            MaturedPattern(
                start_ns=p.start_ns,
                end_ns=p.end_ns,
                outcome_end_ns=p.outcome_end_ns,
                outcome=p.outcome.tolist(),
            )
            for p in bar.matured
            if all(math.isfinite(x) for x in p.outcome)
        ],
        flags=list(bar.flags),
    )
