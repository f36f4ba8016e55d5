"""The cluster options of ``hrmcond run`` (``--process-id``, ``--addresses``): shown, checked, refused early."""

from __future__ import annotations

import pytest

from flows.cli import main
from flows.runner import cluster_addresses
from schemas.errors import HrmcondError


def test_run_help_shows_the_cluster_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert exit_.value.code == 0
    assert "-i PROCESS_ID across hosts: this process's index in --addresses" in text
    assert '-a ADDRESSES across hosts: every process\'s "host:port"' in text
    assert "docs/operations.md, 'Scaling out'" in text


def test_a_process_of_a_cluster_gets_every_address():
    assert cluster_addresses(1, "10.0.0.1:7100; 10.0.0.2:7100", 1) == ["10.0.0.1:7100", "10.0.0.2:7100"]
    assert cluster_addresses(0, "h0:1;h1:1", 2) == ["h0:1", "h1:1"]  # what --processes 2 hands its children
    assert cluster_addresses(0, "[fd00::1]:7100;host-b.example:7100", 1) == ["[fd00::1]:7100", "host-b.example:7100"]
    assert cluster_addresses(None, None, 4) is None


@pytest.mark.parametrize(
    "process_id, addresses, processes, says",
    [
        (1, None, 1, "go together"),
        (None, "h0:1;h1:1", 1, "go together"),
        (2, "h0:1;h1:1", 1, "not an index"),
        (-1, "h0:1;h1:1", 1, "not an index"),
        (0, "h0:1,h1:1", 1, "not host:port"),  # a comma, not Bytewax's ';'
        (0, "h0:1;h1", 1, "not host:port"),
        (0, "h0:1;:2", 1, "not host:port"),
        (0, "h0:1;h1:70000", 1, "not host:port"),
        (0, "h0:1;h0:1", 1, "listed twice"),
        (0, "h0:1;h1:1", 3, "--processes 3 with 2"),
    ],
)
def test_a_wrong_cluster_is_refused(process_id, addresses, processes, says):
    with pytest.raises(HrmcondError, match=says):
        cluster_addresses(process_id, addresses, processes)


def test_the_command_refuses_it_in_one_line_before_loading_anything(tmp_path, capsys):
    missing = tmp_path / "no-such.yaml"  # the check comes first: a bad config would say something else
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--config", str(missing), "--process-id", "1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().splitlines() == [
        "hrmcond run: --process-id and --addresses go together: this process's index in the address list"
    ]
