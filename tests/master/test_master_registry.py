import pytest

from agent.protocol import Booted, Hardware, Load, LogLine, NodeState, StageEvent
from agent.schema import Stage
from beoboot.master.registry import Registry, RegistryError

A, B = "52:54:00:00:00:0a", "52:54:00:00:00:0b"


@pytest.fixture
def reg(tmp_path):
    registry = Registry(tmp_path / "nodes.db")
    yield registry
    registry.close()


def test_numbers_in_order_and_kept(reg, tmp_path):
    assert reg.register(A, Stage.BOOSTER, Hardware(), 1.0).number == 0
    assert reg.register(B, Stage.BOOSTER, Hardware(), 2.0).number == 1
    assert reg.register(A.upper(), Stage.BOOSTER, Hardware(), 3.0).number == 0
    reg.close()
    again = Registry(tmp_path / "nodes.db")
    assert again.register(B, Stage.PXE, Hardware(), 4.0).number == 1
    assert again.register("52:54:00:00:00:0c", Stage.PXE, Hardware(), 5.0).number == 2
    again.close()


@pytest.mark.parametrize(
    "stages, boots",
    [
        (["stage1", "stage2", "stage3"], 1),  # one boot, three agents
        (["stage1", "stage2", "stage3", "stage1"], 2),  # rebooted
        (["stage2", "stage3", "stage2"], 2),  # PXE straight into stage 2, twice
        (["stage3", "stage3"], 2),  # the supervisor restarted: counted as a new boot
    ],
)
def test_boot_counting(reg, stages, boots):
    for stage in stages:
        node = reg.register(A, Stage(stage), Hardware(), 1.0)
    assert node.boot == boots


def test_ready_marks_up_silence_marks_down_heartbeat_revives(reg):
    reg.register(A, Stage.SUPERVISOR, Hardware(), 10.0)
    assert reg.node_by_mac(A).state is NodeState.BOOTING
    reg.record_events(A, [(10.5, StageEvent("stage3_ready", 0.0, Stage.SUPERVISOR))], 10.5)
    assert reg.node_by_mac(A).state is NodeState.UP
    assert [n.number for n in reg.mark_silent_down(cutoff=20.0, now=50.0)] == [0]
    assert reg.node_by_mac(A).state is NodeState.DOWN
    assert reg.mark_silent_down(cutoff=60.0, now=70.0) == []  # already down: no second event
    assert reg.heartbeat(A, Stage.SUPERVISOR, 100.0, 80.0).state is NodeState.UP
    boot, events = reg.timeline(0)
    assert [e.event for e in events] == ["stage3_ready", "heartbeat_lost"]


def test_unknown_mac(reg):
    assert reg.heartbeat(A, Stage.PXE, None, 1.0) is None
    assert reg.record_events(A, [], 1.0) is None
    assert reg.record_logs(A, [(1.0, LogLine(0.0, Stage.PXE, "INFO", "x"))], 1.0) is None


def test_find(reg):
    reg.register(A, Stage.BOOSTER, Hardware(), 1.0)
    reg.register(B, Stage.BOOSTER, Hardware(), 1.0)
    assert {reg.find(r).mac for r in ("1", ".1", "n1", B, B.replace(":", "-"))} == {B}
    with pytest.raises(RegistryError, match="no node '7'"):
        reg.find("7")
    with pytest.raises(RegistryError):
        reg.find("52:54:00:00:00:ff")


def test_uptime_advances_while_alive_and_freezes_when_down(reg):
    reg.register(A, Stage.SUPERVISOR, Hardware(), 0.0)
    node = reg.heartbeat(A, Stage.SUPERVISOR, 100.0, 10.0)
    assert node.uptime_now(15.0) == 105.0
    reg.mark_silent_down(cutoff=20.0, now=40.0)
    assert reg.node_by_mac(A).uptime_now(1000.0) == 100.0


def test_only_the_last_boots_events_and_logs_are_kept(reg, tmp_path):
    """A node that reboots for years must not grow the registry for ever: keep_boots of them stay."""
    reg.register(B, Stage.PXE, Hardware(), 0.0, keep_boots=3)
    reg.record_logs(B, [(0.0, LogLine(0.0, Stage.PXE, "INFO", "the other node's only boot"))], 0.0)
    for boot in range(1, 6):
        reg.register(A, Stage.PXE, Hardware(), float(boot), keep_boots=3)
        reg.record_events(A, [(float(boot), StageEvent("dhcp", 0.0, Stage.PXE, f"boot {boot}"))], float(boot))
        reg.record_logs(A, [(float(boot), LogLine(0.0, Stage.PXE, "INFO", f"line of boot {boot}"))], float(boot))
    assert [m for _, _, _, m in reg.logs(1)] == ["line of boot 3", "line of boot 4", "line of boot 5"]
    assert [m for _, _, _, m in reg.logs(0)] == ["the other node's only boot"]  # other nodes keep theirs
    for boot, kept in ((1, False), (2, False), (3, True), (5, True)):
        assert bool(reg.timeline(1, boot)[1]) is kept, boot
    assert reg.node_by_mac(A).boot == 5


def test_bpctl_marks_down_only_the_boot_it_ordered(reg):
    """A rebooted node may register again before the master saw its link close: the new boot stays as it
    is, and the order goes into the boot it ended."""
    reg.register(A, Stage.SUPERVISOR, Hardware(), 1.0)
    reg.record_events(A, [(2.0, StageEvent("stage3_ready", 2.0, Stage.SUPERVISOR))], 2.0)
    assert reg.mark_down(0, 1, 3.0, "halt", "bpctl, as root asked")
    assert reg.node_by_number(0).state is NodeState.DOWN
    assert ("halt", "bpctl, as root asked") in [(e.event, e.detail) for e in reg.timeline(0, 1)[1]]

    reg.register(A, Stage.PXE, Hardware(), 4.0)  # boot 2 began before the order of boot 1 was recorded
    assert reg.mark_down(0, 1, 5.0, "reboot", "bpctl, as root asked")
    assert (reg.node_by_number(0).boot, reg.node_by_number(0).state) == (2, NodeState.BOOTING)
    assert "reboot" in [e.event for e in reg.timeline(0, 1)[1]] and "reboot" not in [
        e.event for e in reg.timeline(0, 2)[1]
    ]
    assert not reg.mark_down(5, 1, 6.0, "halt", "")  # no such node


def test_a_heartbeat_with_load_keeps_it_until_the_next_one(reg, tmp_path):
    reg.register(A, Stage.SUPERVISOR, Hardware(), 1.0)
    assert reg.node_by_mac(A).load is None
    reg.heartbeat(A, Stage.SUPERVISOR, 5.0, 2.0, load=Load(1.5, 4096, 1024))
    reg.heartbeat(A, Stage.SUPERVISOR, 6.0, 3.0)  # a node that did not say: the last figures stay
    assert reg.node_by_mac(A).load == Load(1.5, 4096, 1024)
    reg.close()
    assert Registry(tmp_path / "nodes.db").node_by_mac(A).load == Load(1.5, 4096, 1024)  # kept in the file


def test_what_a_node_booted_is_kept_until_its_next_registration(reg, tmp_path):
    booted = Booted("6.1.0-57-amd64", {"stage3": "a" * 64, "envroot": "b" * 64})
    reg.register(A, Stage.SUPERVISOR, Hardware(), 1.0, agent_version="0.1.0", booted=booted)
    reg.heartbeat(A, Stage.SUPERVISOR, 5.0, 2.0)
    reg.close()
    again = Registry(tmp_path / "nodes.db")
    node = again.node_by_mac(A)
    assert (node.agent_version, node.booted) == ("0.1.0", booted)
    node = again.register(A, Stage.PXE, Hardware(), 3.0)  # the next boot says what it runs, or nothing
    assert (node.agent_version, node.booted) == ("", Booted())
    again.close()
