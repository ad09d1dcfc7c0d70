"""beoserv's open-files limit: raised to the hard limit at start, and a limit that cannot hold the configured
nodes refused at start, naming the limit, the nodes it holds and what to do."""

import resource
import signal
import subprocess
import sys

import pytest
from master_helpers import MasterProcess

from beoboot.master import fdlimit


def limited(soft: int, hard: int):
    """A preexec_fn that starts the child with these open-files limits, as `ulimit -Sn/-Hn` would."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("nodes, transfers", [(1, 1), (1000, 64), (1024, 64), (5000, 300)])
def test_the_nodes_a_limit_holds_are_the_nodes_it_was_sized_for(nodes, transfers):
    need = fdlimit.needed(nodes, transfers)
    assert fdlimit.nodes_held(need, transfers) == nodes
    assert fdlimit.nodes_held(need - 1, transfers) == nodes - 1
    assert fdlimit.nodes_held(0, transfers) == 0


def test_a_thousand_nodes_fit_an_ordinary_hard_limit():
    # systemd's default hard limit is 524288; 4096 is a cautious site's
    assert fdlimit.needed(1024, 64) <= 4096


def beoserv_argv(tmp_path, config_text: str) -> list[str]:
    (tmp_path / "boot").mkdir(exist_ok=True)
    config = tmp_path / "beoserv.toml"
    config.write_text(config_text)
    return [
        sys.executable,
        "-m",
        "beoboot.master.cli",
        "beoserv",
        "--root",
        str(tmp_path / "boot"),
        "--listen",
        "127.0.0.1:0",
        "--db",
        str(tmp_path / "nodes.db"),
        "--bpsh-socket",
        "none",
        "--config",
        str(config),
    ]


def test_a_hard_limit_too_low_for_max_nodes_is_refused_at_start_naming_it(tmp_path):
    hard = 1024
    ran = subprocess.run(
        beoserv_argv(tmp_path, "max_nodes = 1024\n"),
        preexec_fn=limited(hard, hard),
        capture_output=True,
        text=True,
        timeout=30,
    )
    held = fdlimit.nodes_held(hard, 64)
    assert ran.returncode == 1, ran.stderr
    assert f"hard open-files limit (RLIMIT_NOFILE) is {hard}: it holds {held} nodes" in ran.stderr
    assert "fewer than max_nodes = 1024" in ran.stderr
    assert "LimitNOFILE=" in ran.stderr and "ulimit -Hn" in ran.stderr and "Traceback" not in ran.stderr
    assert "listening" not in ran.stderr and not (tmp_path / "nodes.db").exists()  # nothing was opened


def test_the_soft_limit_is_raised_to_the_hard_one_and_logged(tmp_path):
    need = fdlimit.needed(100, 8)
    (tmp_path / "boot").mkdir()
    config = tmp_path / "beoserv.toml"
    config.write_text("max_nodes = 100\nmax_transfers = 8\n")
    master = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log", config)
    master.start(open_files=64, hard_open_files=need)
    try:
        assert resource.prlimit(master.proc.pid, resource.RLIMIT_NOFILE) == (need, need)
        master.wait_for_log(
            rf"open files: limit {need} \(soft was 64\), {need} needed for max_nodes = 100 and max_transfers = 8"
        )
    finally:
        master.stop()


def test_a_reload_keeps_the_limits_beoserv_started_with(tmp_path):
    (tmp_path / "boot").mkdir()
    config = tmp_path / "beoserv.toml"
    config.write_text("max_nodes = 100\n")
    master = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log", config).start()
    try:
        config.write_text("max_nodes = 5000\nheartbeat_interval = 2.0\n")
        master.signal(signal.SIGHUP)
        master.wait_for_log("max_nodes = 5000 takes effect when beoserv restarts; 100 until then")
        master.wait_for_log(r"config reloaded from .*max_nodes=100, max_transfers=64")
    finally:
        master.stop()
