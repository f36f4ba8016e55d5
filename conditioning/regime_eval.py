"""The regime classifier against the truth: a simulated market's planted regimes, per-class recall, confusion, MI.

``evaluate_regimes(market, model_dir)`` computes the market's features in-process
(:func:`conditioning.datasets.features_of_ticks`, the dataflow's feature code without the dataflow), runs the
model's normaliser and classifier on every kept bar (NaN imputed as live), and compares the arg-max regime
with the truth on the bars where the truth is unambiguous. The regime judged is the one the pipeline emits for a
single bar: the arg-max, except where the feed's SSR/LULD state overrides it (conditioning/hysteresis.py, rule 1:
the classifier is never trusted for the restriction regimes); the arg-max alone is reported beside it. The
truth classes:

- a **planted** regime (``conditioning.sim.market.Stretch``; expected answer :data:`labels.PLANTED`) when the
  bar's whole lookback ``[T - L, T)`` (``labels.lookback_ns``: 32 one-minute bars) lies inside one stretch,
  and the bar is not among the symbol's first ``warmup_bars`` bars (its level baselines are still a running
  mean of a few bars: features/baseline.py);
- ``ssr`` (expected ``ssr_active``) from the scripted sell-off: from the first trade at or below 0.9 x the
  prior close (SEC Rule 201's trigger, found in the ticks) to the session close (schemas/session.py) of the
  symbol's next trading date in the market; ``luld`` (expected ``luld_active``) from the start of the scripted
  limit state to the end of the trading pause. Bar ends ``T`` in ``(start, end]`` count; these take precedence
  over planted stretches.

Figures: per truth class the recall ``P(predicted = expected | truth)`` and the shares of every predicted
regime; the confusion matrix (rows: truth classes, columns: REGIME_NAMES); the plug-in mutual information
``I(truth; predicted) = sum_ij p_ij log2(p_ij / (p_i. p_.j))`` in bits beside the truth entropy ``H(truth)``
(the most it could be). The evidence rules (``labels.EvidenceRules``) are scored on the same bars, so the
report also says how far the honest statistical labels agree with the truth.

:func:`label_shares` reports how labels look on a market without truth (the real samples): class shares of
the classifier and of the evidence rules, and their agreement (Cohen's kappa).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from pydantic import BaseModel

from conditioning.artifacts import LoadedModel, load_model
from conditioning.audit import cohen_kappa
from conditioning.datasets import FeatureTable, features_of_ticks
from conditioning.features.state import FeatureParams
from conditioning.labels import PLANTED, EvidenceRules, lookback_ns, planted_coverage, restriction_labels
from conditioning.regime import REGIME_INDEX, REGIME_NAMES
from conditioning.sim.market import SimulatedMarket
from schemas.session import session_day, trading_date

#: Truth classes, in the confusion matrix's row order, and the regime the classifier should name for each.
EXPECTED: dict[str, str] = {**PLANTED, "ssr": "ssr_active", "luld": "luld_active"}
TRUTH_CLASSES: tuple[str, ...] = tuple(EXPECTED)
#: One regular session of one-minute bars: the level baselines' warm-up the evaluation leaves out.
WARMUP_BARS = 390


class ClassResult(BaseModel):
    truth: str
    expected: str
    n_bars: int
    recall: float | None  # as emitted (arg-max, SSR/LULD state override); None without bars of this class
    classifier_recall: float | None  # the arg-max alone
    predicted_shares: dict[str, float]  # as emitted


class RegimeEvaluation(BaseModel):
    """What :func:`evaluate_regimes` found; ``model_dump_json`` is its JSON form."""

    model_dir: str
    training_fingerprint: str | None
    n_symbols: int
    n_days: int
    n_bars: int  # kept bars of the market
    lookback_bars: int
    warmup_bars: int
    classes: list[ClassResult]
    confusion_rows: list[str]
    confusion_columns: list[str]
    confusion: list[list[int]]
    mutual_information_bits: float
    truth_entropy_bits: float
    #: Recall of the evidence rules (labels.EvidenceRules, defaults) against the same truth.
    evidence_rules: dict[str, float]
    evidence_recall: dict[str, float | None]

    @property
    def recall(self) -> dict[str, float | None]:
        return {c.truth: c.recall for c in self.classes}

    def table(self) -> str:
        """A plain-text table: one row per truth class, recall and the predicted shares."""
        width = max(map(len, TRUTH_CLASSES))
        head = f"{'truth':>{width}} {'bars':>6} {'recall':>6} {'argmax':>6} {'rules':>6}  " + " ".join(
            f"{n[:7]:>7}" for n in REGIME_NAMES
        )
        lines = [head]
        for c in self.classes:
            recall, argmax, rules = (
                "-" if r is None else f"{r:.3f}"
                for r in (c.recall, c.classifier_recall, self.evidence_recall.get(c.truth))
            )
            lines.append(
                f"{c.truth:>{width}} {c.n_bars:>6d} {recall:>6} {argmax:>6} {rules:>6}  "
                + " ".join(f"{c.predicted_shares[n]:>7.3f}" for n in REGIME_NAMES)
            )
        lines.append(
            f"mutual information {self.mutual_information_bits:.3f} bits of H(truth) = {self.truth_entropy_bits:.3f}"
        )
        return "\n".join(lines)


def mutual_information_bits(confusion: np.ndarray) -> tuple[float, float]:
    """Plug-in ``I(rows; columns)`` and ``H(rows)`` in bits from a count matrix."""
    p = np.asarray(confusion, dtype=np.float64)
    total = p.sum()
    if total == 0:
        return 0.0, 0.0
    p = p / total
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mi = float((p[nz] * np.log2(p[nz] / np.outer(rows, cols)[nz])).sum())
    h = float(-(rows[rows > 0] * np.log2(rows[rows > 0])).sum())
    return max(mi, 0.0), h


def restriction_truth(market: SimulatedMarket, symbol: np.ndarray, window_end_ns: np.ndarray) -> np.ndarray:
    """``'ssr'`` / ``'luld'`` / ``''`` per bar from the scripted events (module docstring); LULD wins."""
    out = np.full(len(symbol), "", dtype=object)
    dates: dict[str, list[dt.date]] = {}
    for r in market.reference:
        dates.setdefault(r.symbol, []).append(r.date)
    pause_end = {e.symbol: e.end_ns for e in market.events if e.kind == "luld_pause"}
    for e in market.events:
        mine = symbol == e.symbol
        if e.kind == "ssr_selloff":
            t = market.ticks
            trades = t.filter(
                pc.and_(
                    pc.and_(pc.equal(t["symbol"], e.symbol), pc.equal(t["kind"], "trade")),
                    pc.and_(pc.greater_equal(t["ts_ns"], e.start_ns), pc.less(t["ts_ns"], e.end_ns)),
                )
            )
            hit = np.flatnonzero(trades["price"].to_numpy() <= e.price)
            if hit.size == 0:
                continue  # no trigger: no restriction
            trigger = int(trades["ts_ns"].to_numpy()[hit[0]])
            day = trading_date(trigger)
            later = sorted(d for d in dates.get(e.symbol, []) if d > day)
            until = session_day(later[0] if later else day).close_ns
            out[mine & (window_end_ns > trigger) & (window_end_ns <= until) & (out != "luld")] = "ssr"
        elif e.kind == "luld_limit_state":
            out[mine & (window_end_ns > e.start_ns) & (window_end_ns <= pause_end[e.symbol])] = "luld"
    return out


def bar_truth(
    market: SimulatedMarket, table: FeatureTable, params: FeatureParams, warmup_bars: int = WARMUP_BARS
) -> np.ndarray:
    """Truth class per bar of ``table`` (``TRUTH_CLASSES``), ``''`` where ambiguous (module docstring)."""
    planted, frac = planted_coverage(table.symbol, table.window_end_ns, market.stretches, lookback_ns(params))
    rank = np.zeros(len(table), dtype=np.int64)  # bars of the symbol before this one
    for s in np.unique(table.symbol):
        rows = np.flatnonzero(table.symbol == s)
        rank[rows[np.argsort(table.window_end_ns[rows], kind="stable")]] = np.arange(rows.size)
    truth = np.where((frac >= 1.0) & (rank >= warmup_bars), planted, "").astype(object)
    restricted = restriction_truth(market, table.symbol, table.window_end_ns)
    return np.where(restricted != "", restricted, truth)


@torch.no_grad()
def classify(model: LoadedModel, raw: np.ndarray) -> np.ndarray:
    """The model's arg-max regime ``[N]`` for raw 20-d rows (its own normaliser; NaN imputed as live)."""
    x = torch.as_tensor(model.normalizer.transform(raw), dtype=torch.float32)
    return model.system.regime_classifier(x).argmax(-1).numpy()


def emitted(argmax: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """The regime emitted for a single bar: the feed's SSR/LULD state overrides the arg-max (hysteresis rule 1)."""
    restricted = restriction_labels(raw)
    return np.where(restricted >= 0, restricted, argmax)


def evaluate_regimes(
    market: SimulatedMarket,
    model_dir: str | Path,
    *,
    params: FeatureParams | None = None,
    warmup_bars: int = WARMUP_BARS,
    rules: EvidenceRules | None = None,
    table: FeatureTable | None = None,
) -> RegimeEvaluation:
    """The classifier of ``model_dir`` against ``market``'s truth (module docstring). ``table``: the market's
    features if already computed with ``params`` (``features_of_ticks``, or the dataflow's feature records)."""
    params = params or FeatureParams()
    rules = rules or EvidenceRules()
    if table is None:
        table = features_of_ticks(market.ticks, market.reference, params)
    if not len(table):
        raise ValueError("the market has no bars")
    truth = bar_truth(market, table, params, warmup_bars)
    scored = truth != ""
    model = load_model(model_dir)
    argmax = classify(model, table.raw[scored])
    pred = emitted(argmax, table.raw[scored])
    by_rules = rules.apply(table.raw[scored], table.pattern[scored])
    truth = truth[scored]
    row = np.array([TRUTH_CLASSES.index(t) for t in truth], dtype=np.int64)
    n_regimes = len(REGIME_NAMES)
    confusion = np.bincount(row * n_regimes + pred, minlength=len(TRUTH_CLASSES) * n_regimes).reshape(
        len(TRUTH_CLASSES), n_regimes
    )
    classes, evidence = [], {}
    for i, name in enumerate(TRUTH_CLASSES):
        counts = confusion[i]
        n = int(counts.sum())
        expected = REGIME_INDEX[EXPECTED[name]]
        classes.append(
            ClassResult(
                truth=name,
                expected=EXPECTED[name],
                n_bars=n,
                recall=float(counts[expected] / n) if n else None,
                classifier_recall=float(np.mean(argmax[row == i] == expected)) if n else None,
                predicted_shares={r: float(c / n) if n else 0.0 for r, c in zip(REGIME_NAMES, counts, strict=True)},
            )
        )
        evidence[name] = float(np.mean(by_rules[truth == name] == expected)) if n else None
    mi, h = mutual_information_bits(confusion)
    days = {trading_date(int(t)) for t in table.window_end_ns}
    return RegimeEvaluation(
        model_dir=str(model_dir),
        training_fingerprint=model.manifest.get("training_fingerprint"),
        n_symbols=len(np.unique(table.symbol)),
        n_days=len(days),
        n_bars=len(table),
        lookback_bars=lookback_ns(params) // params.bar_ns,
        warmup_bars=warmup_bars,
        classes=classes,
        confusion_rows=list(TRUTH_CLASSES),
        confusion_columns=list(REGIME_NAMES),
        confusion=confusion.tolist(),
        mutual_information_bits=mi,
        truth_entropy_bits=h,
        evidence_rules={k: float(v) for k, v in rules.to_dict().items()},
        evidence_recall=evidence,
    )


class LabelShares(BaseModel):
    """How labels look on a market without truth: class shares and agreement."""

    n_bars: int
    classifier: dict[str, float]
    evidence_rules: dict[str, float]
    agreement_kappa: float


def label_shares(table: FeatureTable, model_dir: str | Path, rules: EvidenceRules | None = None) -> LabelShares:
    """Class shares of the emitted regime (:func:`emitted`) and of the evidence rules on every bar of ``table``,
    and their agreement (Cohen's kappa)."""
    if not len(table):
        raise ValueError("no bars")
    rules = rules or EvidenceRules()
    pred = emitted(classify(load_model(model_dir), table.raw), table.raw)
    by_rules = rules.apply(table.raw, table.pattern)
    n = len(REGIME_NAMES)

    def shares(y: np.ndarray) -> dict[str, float]:
        return {r: float(c) / len(y) for r, c in zip(REGIME_NAMES, np.bincount(y, minlength=n), strict=True)}

    return LabelShares(
        n_bars=len(table),
        classifier=shares(pred),
        evidence_rules=shares(by_rules),
        agreement_kappa=cohen_kappa(by_rules, pred, n),
    )
