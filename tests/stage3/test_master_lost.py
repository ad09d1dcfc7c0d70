"""What stage 3 does when its master stops answering (master_lost): reboot, halt, or keep running its jobs."""

import queue
import threading

import pytest

from agent import protocol as p
from stage3 import supervisor


class SilentMaster:
    """A MasterLink whose master answers no heartbeat until `back` is set."""

    base_url = "http://master"
    registration = None

    def __init__(self) -> None:
        self.back = threading.Event()
        self.beats = 0

    def heartbeat(self, uptime, load):
        self.beats += 1
        return p.HeartbeatReply(0, p.NodeState.UP, 5.0) if self.back.is_set() else None

    def flush(self) -> None:
        pass


@pytest.fixture
def said(monkeypatch):
    lines: list[str] = []
    monkeypatch.setattr(supervisor, "say", lambda text, level="info": lines.append(text))
    return lines


@pytest.mark.parametrize("lost, act", [("reboot", "reboot"), ("halt", "halt")])
def test_reboot_and_halt_act_once_the_master_is_lost_for_the_timeout(said, lost, act):
    order = supervisor.supervise(SilentMaster(), 0.2, dry_run=True, lost=lost)
    assert order is None
    assert any(f"lost for 0 s: {lost}" in line for line in said), said
    assert any(act in line.lower() for line in said[-1:]), said


def test_keep_outlives_the_timeout_and_goes_on_when_the_master_is_back(said):
    link, orders = SilentMaster(), queue.SimpleQueue()
    order = p.NodePower(p.PowerAction.POWEROFF)
    threading.Timer(1.0, link.back.set).start()  # five timeouts later
    threading.Timer(1.5, orders.put, (order,)).start()
    assert supervisor.supervise(link, 0.2, dry_run=True, orders=orders, lost="keep") is order
    assert [line for line in said if "jobs run on, waiting" in line] == [said[0]]  # said once, not each beat
    assert any("back after" in line for line in said), said
    assert link.beats >= 3  # every 0.5 s, through the time lost and after
