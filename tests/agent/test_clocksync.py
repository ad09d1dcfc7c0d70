"""The node's clock, set from the master's (agent.clocksync): the offset arithmetic, when the clock is set
(registration, then only past the drift bound), and a real beoserv's replies measured by the agent's link."""

import contextlib
import io
import json
import time

import pytest
from master_helpers import MasterProcess, publish_files

from agent.clocksync import ClockKeeper, measure
from agent.download import Backoff
from agent.masterlink import MasterLink
from beoboot.master.cli import bpstat_main


def test_the_offset_is_the_masters_time_plus_half_the_round_trip_less_ours():
    # sent at mono 10.0, answered at 10.2: the master said 1000.0, which was 0.1 s before we got it
    seen = measure(1000.0, 10.0, 10.2, received_wall=400.0)
    assert seen is not None
    assert seen.round_trip == pytest.approx(0.2) and seen.offset == pytest.approx(600.1)
    assert measure(1000.0, 10.0, 10.0, received_wall=1000.5).offset == pytest.approx(-0.5)  # we are ahead


@pytest.mark.parametrize(
    ("master_time", "sent", "received", "wall"),
    [(0.0, 1.0, 2.0, 5.0), (float("nan"), 1.0, 2.0, 5.0), (100.0, 2.0, 1.0, 5.0), (100.0, 1.0, float("inf"), 5.0)],
)
def test_no_offset_from_a_reply_without_a_time_or_a_round_trip_that_ran_backwards(master_time, sent, received, wall):
    assert measure(master_time, sent, received, wall) is None


class FakeClock:
    """A wall clock `behind` seconds behind the master's, which a step moves."""

    def __init__(self, behind: float) -> None:
        self.behind = behind
        self.steps: list[float] = []

    def wall(self) -> float:
        return 1000.0 - self.behind

    def step(self, offset: float) -> None:
        self.steps.append(offset)
        self.behind -= offset


def test_registration_sets_the_clock_then_only_drift_past_the_bound_sets_it_again():
    clock = FakeClock(behind=3.5e8)  # an RTC some eleven years behind
    said: list[str] = []
    keeper = ClockKeeper(clock.step, max_drift=0.5, wall=clock.wall, log=said.append)
    keeper.observe(1000.0, 0.0, 0.0, first=True)
    assert clock.steps == [pytest.approx(3.5e8)] and keeper.offset == pytest.approx(3.5e8) and keeper.residual == 0
    assert "clock set to the master's: it was +350000000.000 s off" in said[0]

    clock.behind = 0.3  # drift within the bound: measured, not set
    keeper.observe(1000.0, 5.0, 5.0)
    assert len(clock.steps) == 1 and keeper.offset == keeper.residual == pytest.approx(0.3)

    clock.behind = -0.7  # past it (ahead of the master): set again
    keeper.observe(1000.0, 6.0, 6.0)
    assert clock.steps[1:] == [pytest.approx(-0.7)] and keeper.steps == 2 and keeper.residual == 0.0
    assert keeper.offset == pytest.approx(-0.7)


def test_a_registration_sets_the_clock_even_when_it_is_close():
    clock = FakeClock(behind=0.2)
    keeper = ClockKeeper(clock.step, max_drift=0.5, wall=clock.wall)
    keeper.observe(1000.0, 0.0, 0.0, first=True)
    assert clock.steps == [pytest.approx(0.2)]


def test_measure_only_never_sets_and_a_refused_setting_is_said():
    keeper = ClockKeeper(None, wall=lambda: 10.0)  # a simulated node: the host's clock is not its own
    keeper.observe(1000.0, 0.0, 0.0, first=True)
    assert keeper.steps == 0 and keeper.residual == keeper.offset == pytest.approx(990.0)

    def refuse(offset: float) -> None:
        raise PermissionError(1, "Operation not permitted")

    said: list[str] = []
    keeper = ClockKeeper(refuse, wall=lambda: 10.0, log=said.append)
    keeper.observe(1000.0, 0.0, 0.0, first=True)
    assert keeper.steps == 0 and keeper.residual == pytest.approx(990.0)
    assert said and "cannot set the clock" in said[0] and "not permitted" in said[0]


class HostClockBehind(FakeClock):
    """The host's clock, `behind` seconds behind: the master runs on the host."""

    def wall(self) -> float:
        return time.time() - self.behind


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    work = tmp_path_factory.mktemp("clock")
    root = work / "boot"
    root.mkdir()
    publish_files(root, {"stage3.cpio": b"x"})
    config = work / "beoserv.toml"
    config.write_text("max_clock_drift = 0.25\nheartbeat_interval = 0.2\n")
    server = MasterProcess(root, work / "nodes.db", work / "beoserv.log", config).start()
    yield server
    server.stop()


def bpstat_json(master, number: int) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bpstat_main(["--master", master.url, "--json", str(number)]) == 0
    return out.getvalue()


def test_a_node_behind_the_master_is_set_at_registration_and_past_the_drift_bound_and_bpstat_shows_it(master):
    """A real beoserv's replies: the node's (fake) wall clock an hour behind is stepped at registration by
    the master's time, and what the heartbeats measure after that is within a round trip of zero."""
    clock = HostClockBehind(3600.0)
    keeper = ClockKeeper(clock.step, wall=clock.wall)
    link = MasterLink(master.url, "52:54:00:00:07:01", "stage3", backoff=Backoff(first=0.01), clock_keeper=keeper)
    reply = link.register()
    assert reply.max_clock_drift == 0.25 and keeper.max_drift == 0.25
    assert clock.steps == [pytest.approx(3600.0, abs=0.2)]
    for _ in range(2):  # the first reports the registration's measurement, the second the first's
        assert link.heartbeat(1.0) is not None
    assert len(clock.steps) == 1 and abs(keeper.offset) < 0.2
    (row,) = json.loads(bpstat_json(master, reply.number))
    assert abs(row["clock_offset"]) < 0.2 and abs(row["clock_residual"]) < 0.2
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bpstat_main(["--master", master.url, str(reply.number)]) == 0
    header, line = out.getvalue().splitlines()[:2]
    column = header.split().index("clock") - len(header.split())  # from the end: earlier columns hold spaces
    assert line.split()[column].endswith("s")
    assert abs(float(line.split()[column][:-1])) < 0.2

    clock.behind += 2.0  # the node's clock drifts two seconds: the next heartbeat's reply sets it again
    assert link.heartbeat(1.0) is not None
    assert clock.steps[1:] == [pytest.approx(2.0, abs=0.2)] and abs(clock.behind) < 0.2
    assert link.heartbeat(1.0) is not None  # which reports it: 2 s measured, nothing left
    row = json.loads(bpstat_json(master, reply.number))
    assert row[0]["clock_offset"] == pytest.approx(2.0, abs=0.2) and row[0]["clock_residual"] == 0.0


def test_a_link_without_a_setter_measures_and_leaves_the_clock(master):
    """What simulated nodes do: they share the host's clock, so they measure an offset of about zero."""
    before = time.clock_gettime(time.CLOCK_REALTIME)
    link = MasterLink(master.url, "52:54:00:00:07:02", "stage3", backoff=Backoff(first=0.01))
    link.register()
    assert link.heartbeat(1.0) is not None
    assert link.clock_keeper.steps == 0 and abs(link.clock_keeper.offset) < 0.2
    assert time.clock_gettime(time.CLOCK_REALTIME) - before < 30  # not stepped (a test host may be slow)
