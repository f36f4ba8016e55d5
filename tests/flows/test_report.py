"""``hrmcond report``: the page's sections and numbers from small synthetic records, no external resource, and
the real TAQ day's page rendered by a headless Chromium without a script error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conditioning.regime import REGIME_NAMES
from flows.cli import main
from flows.report import NO_LATENCY, REGIME_COLOURS, Day, price_path, render, runs, volatility
from schemas.records import (
    ConditioningFlags,
    ContextRecord,
    DeadLetter,
    FeatureRecord,
    MaturedPattern,
    StageLatencies,
)

CONFIG = str(Path(__file__).resolve().parents[2] / "deploy" / "local.yaml")
FLAGS = ConditioningFlags(enable_regime=True, enable_rag=True, enable_hybrid=True, fail_open=True)
T0 = 1_709_562_660_000_000_000  # 2024-03-04 14:31 UTC = 09:31 ET (EST), the first bar's end
MIN = 60 * 10**9


def context(
    symbol: str, i: int, regime: str = "normal", rag: str = "ok", state: str = "NORMAL", latency_ms: float | None = None
) -> ContextRecord:
    latency = (
        None
        if latency_ms is None
        else StageLatencies(features_ms=0, regime_ms=0, rag_ms=0, fusion_ms=0, total_ms=latency_ms)
    )
    return ContextRecord(
        symbol=symbol,
        window_end_ns=T0 + i * MIN,
        context=[0.0] * 256,
        regime=regime,
        regime_probs=[0.125] * 8,
        ssr_luld_state=state,
        rag_status=rag,
        flags=FLAGS,
        model_version="m@0",
        latency=latency,
    )


def feature(symbol: str, i: int, matured: list[MaturedPattern] = (), tsrv: float = 1e-6) -> FeatureRecord:
    end = T0 + i * MIN
    return FeatureRecord(
        symbol=symbol,
        window_start_ns=end - 30 * MIN,
        window_end_ns=end,
        n_trades=5,
        n_quotes=5,
        rv=4e-6,
        tsrv=tsrv,
        bpv=2.25e-6,
        amihud=None,
        ssr_luld_state="NORMAL",
        volume_profile=[0.1] * 10,
        spread=[None] * 3,
        regime_features=[0.0] * 20,
        pattern=[0.0] * 128,
        matured=list(matured),
    )


def link(end_bar: int, bars: int, ret: float) -> MaturedPattern:
    end = T0 + end_bar * MIN
    return MaturedPattern(start_ns=end - 32 * MIN, end_ns=end, outcome_end_ns=end + bars * MIN, outcome=[ret, -12.0])


def dead(reason: str) -> DeadLetter:
    return DeadLetter.of(b"{", reason, f"{reason} detail", T0)


def synthetic_day() -> Day:
    """AAA: 2 regime changes in 10 bars, 2 RAG timeouts, SSR active over bars 5-6; BBB: one regime, 1 RAG error."""
    aaa = [
        context(
            "AAA",
            i,
            "high_vol" if 4 <= i < 7 else "normal",
            "timeout" if i < 2 else "ok",
            "SSR_ACTIVE" if i in (5, 6) else "NORMAL",
        )
        for i in range(10)
    ]
    bbb = [context("BBB", i, "low_vol", "error" if i == 0 else "ok") for i in range(10)]
    features = [feature(s, i) for s in ("AAA", "BBB") for i in range(10)]
    return Day(
        aaa + bbb,
        features,
        [dead("bad_json"), dead("bad_json"), dead("unknown_symbol")],
        {"contexts": Path("ctx.jsonl")},
    )


def header(page: str, name: str) -> str:
    return re.search(rf"<th>{re.escape(name)}</th><td>(.*?)</td>", page).group(1)


def test_page_has_a_section_per_symbol_and_the_run_numbers():
    page = render(synthetic_day())
    assert header(page, "symbols") == "2" and header(page, "contexts") == "20"
    assert header(page, "bars (feature records)") == "20" and header(page, "dead letters") == "3"
    assert header(page, "fail-open rate").startswith("15.00%")  # 2 timeouts + 1 error of 20
    assert header(page, "regime change rate").startswith("max 20.0%, mean 10.0%")  # AAA 2 of 10, BBB 0
    assert header(page, "ET days") == "Mon 2024-03-04"
    for i, symbol in enumerate(("AAA", "BBB")):  # table of contents -> sections
        assert f'<a href="#s{i}-{symbol}">{symbol}</a>' in page and f'id="s{i}-{symbol}"' in page
    section = page[page.index('id="s0-AAA"') : page.index('id="s1-BBB"')]
    for title in (
        "AAA: price path (last trade) and regime",
        "AAA: realised volatility",
        "AAA: SSR/LULD state and RAG status",
    ):
        assert title in section
    # the SSR/LULD events in ET, and the regime runs as bands with their ET span
    assert "<td>2024-03-04 09:36 ET</td><td>NORMAL</td><td>SSR_ACTIVE</td>" in section
    assert "<td>2024-03-04 09:38 ET</td><td>SSR_ACTIVE</td><td>NORMAL</td>" in section
    assert "regime high_vol 09:34-09:37 ET" in section and "RAG timeout 09:30-09:32 ET" in section
    assert NO_LATENCY in page
    assert re.search(r"<td>bad_json</td><td class='n'>2</td>", page)
    assert re.search(r"<td>unknown_symbol</td><td class='n'>1</td>", page)


def test_tens_of_symbols_get_a_table_row_and_a_section_each():
    symbols = [f"S{k:02d}" for k in range(40)]
    page = render(Day([context(s, i) for s in symbols for i in range(30)], [], [], {}))
    assert len(re.findall(r'<tr class="toc"', page)) == len(re.findall(r'<section class="symbol"', page)) == 40
    assert header(page, "symbols") == "40" and page.count("<svg") == 3 * 40


def test_a_features_only_replay_gets_its_charts_without_rag():
    page = render(Day([], synthetic_day().features, [], {}))
    assert header(page, "contexts") == "0" and header(page, "fail-open rate").startswith("0.00%")
    assert page.count('<section class="symbol"') == 2 and ">RAG</text>" not in page and ">SSR/LULD</text>" in page


def test_volatility_is_the_square_root_of_the_variances_in_bp():
    tsrv, rv, bpv = volatility([feature("AAA", 0), feature("AAA", 1, tsrv=-1e-7)])
    assert [y for _, y in rv.points] == pytest.approx([20.0, 20.0])  # sqrt(4e-6) = 20 bp
    assert [y for _, y in bpv.points] == pytest.approx([15.0, 15.0])
    assert tsrv.points[0][1] == pytest.approx(10.0) and tsrv.points[1][1] is None  # a negative TSRV: no root
    page = render(synthetic_day())
    assert "sqrt(variance), bp of log price" in page and "trailing 30 min window" in page


def test_latency_histogram_when_contexts_carry_latencies():
    day = Day([context("AAA", i, latency_ms=float(i)) for i in range(1, 11)], [], [], {})
    page = render(day)
    assert NO_LATENCY not in page and "Latency per context: p50 5.50 ms" in page and "No dead letters." in page


def test_no_external_resource_in_the_page():
    page = render(synthetic_day())
    assert set(re.findall(r"https?://[^\s\"'<>]*", page)) == {"http://www.w3.org/2000/svg"}  # a namespace name
    assert not re.search(r"\bsrc=|<link|@import|url\(", page)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))


def test_price_path_chains_matured_returns_and_restarts_at_a_missing_link():
    feats = [
        feature("AAA", 0, [link(0, 2, 0.01)]),
        feature("AAA", 2, [link(2, 2, 0.02)]),
        feature("AAA", 6, [link(6, 2, -0.01)]),
    ]  # no link starts at bar 4
    points, restarts = price_path(feats)
    assert points == [
        (T0, 0.0),
        (T0 + 2 * MIN, 1.0),
        (T0 + 4 * MIN, pytest.approx(3.0)),
        (T0 + 6 * MIN, None),
        (T0 + 6 * MIN, 0.0),
        (T0 + 8 * MIN, -1.0),
    ]
    assert restarts == 1


def test_runs_merge_contiguous_bars_and_leave_gaps():
    bands = runs(
        [(T0, "ok"), (T0 + MIN, "ok"), (T0 + 3 * MIN, "ok"), (T0 + 4 * MIN, "empty"), (T0 + 5 * MIN, None)],
        MIN,
        {"ok": "#0f0"},
        "RAG",
    )
    assert [(b.start_ns - T0) // MIN for b in bands] == [-1, 2, 3]
    assert [(b.end_ns - T0) // MIN for b in bands] == [1, 3, 4]


def test_every_regime_of_the_model_has_a_colour():
    assert list(REGIME_COLOURS) == list(REGIME_NAMES)


def test_cli_reads_the_dead_letters_beside_the_contexts(tmp_path, capsys):
    day = synthetic_day()
    (tmp_path / "ctx.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in day.contexts))
    (tmp_path / "ctx.dead-letters.jsonl").write_text("".join(d.model_dump_json() + "\n" for d in day.dead))
    main(["report", "--contexts", str(tmp_path / "ctx.jsonl"), "--out", str(tmp_path / "r.html")])
    assert "20 contexts, 0 feature records, 3 dead letters" in capsys.readouterr().out
    assert header((tmp_path / "r.html").read_text(), "dead letters") == "3"


def test_cli_names_a_missing_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--contexts", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r.html")])
    assert exit_.value.code == 2 and "nope.jsonl: no such file" in capsys.readouterr().err


# -- in a real browser ----------------------------------------------------------------------------------------
def chromium() -> str:
    """Debian's chromium (``make test`` installs it as root, tests/install_debian.sh)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed, and installing it needs root (tests/install_debian.sh)")
    pytest.fail(
        "chromium is missing although this runs as root: tests/install_debian.sh (make test) should "
        "have installed it; see its output"
    )


def browse(exe: str, page: Path, tmp_path: Path, *args: str) -> str:
    """Chromium headless on the page (a private profile, so parallel runs do not share one); its stdout."""
    cmd = [
        exe,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.shared_data
def test_real_taq_day_renders_in_chromium_without_script_errors(tmp_path, taq_sample_args):
    exe = chromium()  # before the replay: a missing browser is said at once
    ctx, feats, page = tmp_path / "ctx.jsonl", tmp_path / "feat.jsonl", tmp_path / "report.html"
    main(
        [
            "replay",
            "--config",
            CONFIG,
            *taq_sample_args,
            "--out",
            str(ctx),
            "--features-out",
            str(feats),
        ]
    )
    main(["report", "--contexts", str(ctx), "--features", str(feats), "--out", str(page)])

    dom = browse(exe, page, tmp_path, "--dump-dom")
    assert '<pre id="js-errors"></pre>' in dom and 'data-errors="yes"' not in dom
    # the page's script ran to its end, after checking that each of the 3 charts of the one symbol has a size
    assert 'data-rendered="3"' in dom
    assert "XXX: price path (last trade) and regime" in dom and "Tue 2018-01-02, Wed 2018-01-03" in dom

    shot = tmp_path / "report.png"
    browse(exe, page, tmp_path, f"--screenshot={shot}", "--window-size=1040,1500")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000  # charts, not blank

    # the error hook works: a failing script on the same page shows up in the dumped DOM
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("</body>", "<script>no_such_function();</script></body>"))
    dom = browse(exe, broken, tmp_path, "--dump-dom")
    assert re.search(r'<pre id="js-errors" data-errors="yes">[^<]*no_such_function', dom)
