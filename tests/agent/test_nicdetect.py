"""NIC detection against a fake /sys tree: matching, load order, the console lines, interfaces, carrier."""

import os

import pytest

from agent.config import AgentConfig, NicAlias
from agent.net import nicdetect
from agent.system import kmodload

E1000 = "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"
VIRTIO_NET = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
RTL8139 = "pci:v000010ECd00008139sv00001AF4sd00001100bc02sc00i00"
UNKNOWN = "pci:v00001234d00005678sv*sd*bc02sc00i00"
BRIDGE = "pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00"

TABLE = (
    NicAlias("pci:v00008086d0000100Esv*sd*bc*sc*i*", "e1000"),
    NicAlias("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci"),
    NicAlias("virtio:d00000001v*", "virtio_net"),
    NicAlias("pci:v000010ECd00008139sv*sd*bc*sc*i*", "8139cp"),
    NicAlias("pci:v*d00008139sv000010ECsd00008139bc*sc*i*", "8139too"),  # another subsystem: no match
)
KO = "/usr/lib/modules/6.1.0/kernel/drivers"
CONFIG = AgentConfig(
    version="0",
    stage="stage2",
    program="stage2.pxe",
    kernel_version="6.1.0",
    nic_table=TABLE,
    module_load_order={
        "e1000": (f"{KO}/net/ethernet/intel/e1000/e1000.ko",),
        "virtio_pci": (f"{KO}/virtio/virtio.ko", f"{KO}/virtio/virtio_ring.ko", f"{KO}/virtio/virtio_pci.ko"),
        "virtio_net": (f"{KO}/virtio/virtio.ko", f"{KO}/virtio/virtio_ring.ko", f"{KO}/net/virtio_net.ko"),
        "8139cp": (f"{KO}/net/mii.ko", f"{KO}/net/ethernet/realtek/8139cp.ko"),
    },
)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def add_device(sysfs, slot, modalias, class_code, *, driver=None, interfaces=(), virtio=None):
    base = os.path.join(sysfs, "bus/pci/devices", slot)
    vendor, device = modalias[9:13].lower(), modalias[18:22].lower()
    _write(f"{base}/modalias", modalias)
    _write(f"{base}/class", f"0x{class_code:06x}")
    _write(f"{base}/vendor", f"0x{vendor}")
    _write(f"{base}/device", f"0x{device}")
    if driver:
        os.symlink(f"../../../bus/pci/drivers/{driver}", f"{base}/driver")
    parent = base
    if virtio:
        child_alias, child_driver = virtio
        parent = f"{base}/virtio0"
        _write(f"{parent}/modalias", child_alias)
        os.symlink(f"../../../../bus/virtio/drivers/{child_driver}", f"{parent}/driver")
    for name in interfaces:
        os.makedirs(f"{parent}/net/{name}")
        _write(f"{sysfs}/class/net/{name}/address", "52:54:00:12:34:56")
        _write(f"{sysfs}/class/net/{name}/carrier", "1")


@pytest.fixture
def sysfs(tmp_path):
    root = str(tmp_path)
    add_device(root, "0000:00:00.0", BRIDGE, 0x060000)
    add_device(root, "0000:00:01.0", E1000, 0x020000, driver="e1000", interfaces=["eth0"])
    add_device(
        root,
        "0000:00:02.0",
        VIRTIO_NET,
        0x020000,
        driver="virtio-pci",
        virtio=("virtio:d00000001v00001AF4", "virtio_net"),
        interfaces=["eth1"],
    )
    add_device(root, "0000:00:03.0", RTL8139, 0x020000, driver="8139cp", interfaces=["eth2"])
    add_device(root, "0000:00:04.0", UNKNOWN.replace("*", "0"), 0x020000)
    return root


def test_read_pci_devices(sysfs):
    devices = nicdetect.read_pci_devices(sysfs)
    assert [d.slot for d in devices] == ["0000:00:00.0", "0000:00:01.0", "0000:00:02.0", "0000:00:03.0", "0000:00:04.0"]
    e1000 = devices[1]
    assert (e1000.ids, e1000.class_code, e1000.modalias, e1000.is_network) == ("8086:100e", 0x020000, E1000, True)
    assert not devices[0].is_network


def test_read_pci_devices_without_sysfs(tmp_path):
    assert nicdetect.read_pci_devices(str(tmp_path / "nothing")) == []


@pytest.mark.parametrize(
    "modalias, modules",
    [
        (E1000, ("e1000",)),
        (VIRTIO_NET, ("virtio_pci",)),
        ("virtio:d00000001v00001AF4", ("virtio_net",)),
        ("virtio:d00000004v00001AF4", ()),  # virtio-rng: not a NIC
        (RTL8139, ("8139cp",)),
        ("pci:v000010ECd00008139sv000010ECsd00008139bc02sc00i00", ("8139cp", "8139too")),  # udev loads both
        ("pci:v00008086d0000100esv*", ()),  # the kernel's modalias is upper-case hex: match is case-sensitive
    ],
)
def test_match_modules(modalias, modules):
    assert nicdetect.match_modules(modalias, TABLE) == modules


def test_plan_covers_network_devices_only(sysfs):
    plans = nicdetect.plan(nicdetect.read_pci_devices(sysfs), TABLE)
    assert [(p.device.slot, p.modules) for p in plans] == [
        ("0000:00:01.0", ("e1000",)),
        ("0000:00:02.0", ("virtio_pci",)),
        ("0000:00:03.0", ("8139cp",)),
        ("0000:00:04.0", ()),
    ]


def test_load_nic_drivers_dry_run_names_every_step(sysfs):
    lines = []
    nicdetect.load_nic_drivers(CONFIG, dry_run=True, say=lines.append, sysfs=sysfs)
    assert f"beoboot: dry run: would finit_module({KO}/net/ethernet/intel/e1000/e1000.ko)" in lines
    assert "beoboot: nic 0000:00:01.0 8086:100e -> e1000 (dry run: not loaded)" in lines
    assert lines.count(f"beoboot: dry run: would finit_module({KO}/net/mii.ko)") == 1


def test_load_nic_drivers_reports_bound_drivers_and_missing_ones(sysfs, monkeypatch):
    loaded = []
    monkeypatch.setattr(kmodload, "finit_module", lambda path: loaded.append(path) or True)
    lines = []
    nicdetect.load_nic_drivers(CONFIG, dry_run=False, say=lines.append, sysfs=sysfs, child_timeout=0.1)
    assert lines == [
        "beoboot: nic 0000:00:01.0 8086:100e -> e1000",
        "beoboot: nic 0000:00:02.0 1af4:1000 -> virtio_net (via virtio_pci)",
        "beoboot: nic 0000:00:03.0 10ec:8139 -> 8139cp",
        "beoboot: nic 0000:00:04.0 1234:5678 (class 020000) has no driver in this image: add its driver to the "
        "image's `drivers` (check with `beoboot-build nics --check`), rebuild, and retry",
    ]
    # dependencies first, each file once, virtio_pci before virtio_net (which the virtio child asked for)
    assert loaded == [
        CONFIG.module_load_order["e1000"][0],
        *CONFIG.module_load_order["virtio_pci"],
        f"{KO}/net/virtio_net.ko",
        *CONFIG.module_load_order["8139cp"],
    ]


def test_unbound_device_and_refused_module_are_reported(tmp_path, monkeypatch):
    sysfs = str(tmp_path)
    add_device(sysfs, "0000:00:01.0", E1000, 0x020000)

    def refuse(path):
        raise kmodload.ModuleLoadError(8, f"finit_module({path}): Exec format error")

    monkeypatch.setattr(kmodload, "finit_module", refuse)
    lines = []
    nicdetect.load_nic_drivers(CONFIG, dry_run=False, say=lines.append, sysfs=sysfs, child_timeout=0.1)
    assert lines[0].startswith("beoboot: cannot load e1000: ") and "Exec format error" in lines[0]
    assert lines[1].startswith("beoboot: nic 0000:00:01.0 8086:100e -> loaded e1000 but none took the device")


def test_no_network_controller_is_said(tmp_path):
    lines = []
    nicdetect.load_nic_drivers(CONFIG, dry_run=True, say=lines.append, sysfs=str(tmp_path))
    assert lines == ["beoboot: no network controller (PCI class 02) found"]


def test_interfaces_carrier_and_mac(sysfs):
    assert nicdetect.interfaces_of("0000:00:01.0", sysfs) == ["eth0"]
    assert nicdetect.interfaces_of("0000:00:02.0", sysfs) == ["eth1"]  # under virtio0
    assert nicdetect.interfaces_of("0000:00:04.0", sysfs) == []
    assert nicdetect.carrier("eth0", sysfs) and not nicdetect.carrier("eth9", sysfs)
    assert nicdetect.mac_address("eth0", sysfs) == bytes.fromhex("525400123456")


def test_load_chain_skips_what_is_loaded():
    seen = {"/a.ko"}
    calls = []
    done = kmodload.load_chain(
        ["/a.ko", "/b.ko", "/b.ko", "/c.ko"],
        dry_run=False,
        loaded=seen,
        loader=lambda p: calls.append(p) or p != "/c.ko",
    )
    assert calls == ["/b.ko", "/c.ko"]
    assert done == ["finit_module(/b.ko)"]  # /c.ko answered EEXIST: already there
    assert seen == {"/a.ko", "/b.ko", "/c.ko"}


def test_syscall_number():
    assert kmodload.syscall_number("x86_64") == 313
    with pytest.raises(kmodload.ModuleLoadError, match="'mips'"):
        kmodload.syscall_number("mips")


def test_bring_up_dry_run_touches_nothing(sysfs, monkeypatch):
    from agent.net import network

    monkeypatch.setattr(kmodload, "finit_module", lambda path: pytest.fail(f"loaded {path} in a dry run"))
    lines = []
    assert network.bring_up(CONFIG, dry_run=True, cmdline_options={}, say=lines.append, sysfs=sysfs) is None
    assert lines[-1] == "beoboot: dry run: would wait for the interfaces, run DHCP and apply the lease"


@pytest.mark.parametrize(
    "with_unknown_nic, words",
    [(False, "this node has no network card"), (True, "no network card of this node has a driver")],
)
def test_bring_up_without_a_driver_says_what_to_do(tmp_path, with_unknown_nic, words):
    from agent.net import network

    if with_unknown_nic:
        add_device(str(tmp_path), "0000:00:04.0", UNKNOWN.replace("*", "0"), 0x020000)
    with pytest.raises(network.NetworkError, match=words) as caught:
        network.bring_up(CONFIG, dry_run=False, cmdline_options={}, say=lambda line: None, sysfs=str(tmp_path))
    assert "beoboot-build nics --check" in caught.value.hint
