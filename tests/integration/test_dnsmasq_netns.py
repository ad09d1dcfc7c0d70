"""A node network-boots from the real dnsmasq (DHCP + TFTP) and nginx of a build's server/ configs, not from
QEMU's built-in DHCP/TFTP: all inside a network namespace this test makes (a bridge with the master's
address and a tap for QEMU), so no packet leaves it. The namespace is removed whatever happens."""

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_beoboot
from netns import qemu_netns_missing

from beoboot.artifacts.media import SERVER_ROOT_PLACEHOLDER
from beoboot.artifacts.servers import DNSMASQ_LEASES, NGINX_STATE_DIR
from beoboot.vm import qemu

pytestmark = pytest.mark.integration

NS = f"beoboot-dnsmasq-{os.getpid()}"
BRIDGE, TAP = "br0", "tap0"
MASTER_ADDR = "10.99.0.1"  # the master's address on the test namespace's bridge; nowhere else
NODE_RANGE = "10.99.0.100-10.99.0.150/24"
NODES = 32  # 51 addresses hold 34 nodes with room to spare
STATE_PLACEHOLDER = str(NGINX_STATE_DIR)  # where the build's nginx.conf keeps its pid and logs
STAGE2_UP = "beoboot: stage 2 agent up"
TIMEOUT = 180.0


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _in_ns(*cmd):
    return ["ip", "netns", "exec", NS, *map(str, cmd)]


def _prerequisites_missing():
    return qemu_netns_missing(("dnsmasq", "nginx"), "apt-get install iproute2 dnsmasq-base nginx-light")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """A build for the namespace's network: its master is the bridge, dnsmasq hands out NODE_RANGE on it.
    beoboot.smoke=network: the stage-2 agent gets its own lease from dnsmasq too, then powers off."""
    why = _prerequisites_missing()
    if why:
        pytest.skip(why)
    outdir = tmp_path_factory.mktemp("netns-out")
    site = outdir.parent / "netns-site.toml"
    site.write_text(
        f'[build]\nmaster_url = "http://{MASTER_ADDR}/"\n\n'
        f'[artifacts]\nnodes = {NODES}\nnode_range = "{NODE_RANGE}"\ninterface = "{BRIDGE}"\n'
        'append = "beoboot.smoke=network"\n'
    )
    run_beoboot("build", "-q", "-c", site, "-o", outdir)
    return outdir


@pytest.fixture(scope="module")
def namespace():
    """The namespace with a bridge (the master's address) and an unattached tap for QEMU; removed after."""
    if _prerequisites_missing():
        pytest.skip(_prerequisites_missing())
    _ip("netns", "add", NS)
    try:
        _ip("-n", NS, "link", "set", "lo", "up")
        # forward_delay 0: the tap forwards as soon as QEMU opens it, not 15 s later
        _ip("-n", NS, "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0")
        _ip("-n", NS, "addr", "add", f"{MASTER_ADDR}/24", "dev", BRIDGE)
        _ip("-n", NS, "tuntap", "add", "dev", TAP, "mode", "tap")
        _ip("-n", NS, "link", "set", TAP, "master", BRIDGE)
        _ip("-n", NS, "link", "set", TAP, "up")
        _ip("-n", NS, "link", "set", BRIDGE, "up")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    assert NS not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _render(conf: Path, out: Path, state: Path) -> str:
    """The build's server config as installed for this run: the tree at `out`, nginx's state and dnsmasq's
    leases in `state`."""
    text = conf.read_text().replace(STATE_PLACEHOLDER, str(state)).replace(SERVER_ROOT_PLACEHOLDER, str(out))
    return text.replace(str(DNSMASQ_LEASES), f"{state}/leases")


@contextlib.contextmanager
def _daemon(cmd, name):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at once ({proc.returncode}): {proc.stderr.read()}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def servers(out, namespace, tmp_path_factory):
    """dnsmasq and nginx from OUT/server/, both inside the namespace; yields their state directory."""
    state = tmp_path_factory.mktemp("netns-state")
    dnsmasq_conf, nginx_conf = state / "dnsmasq.conf", state / "nginx.conf"
    dnsmasq_conf.write_text(_render(out / "server/dnsmasq.conf", out, state))
    nginx_conf.write_text(_render(out / "server/nginx.conf", out, state))
    conf = dnsmasq_conf.read_text()
    assert f"tftp-root={out}/pxe" in conf and f"interface={BRIDGE}" in conf and f"dhcp-leasefile={state}/leases" in conf
    dnsmasq = _in_ns(
        "dnsmasq",
        "--keep-in-foreground",
        f"--conf-file={dnsmasq_conf}",
        "--user=root",
        "--group=root",
        f"--pid-file={state}/dnsmasq.pid",
        f"--log-facility={state}/dnsmasq.log",
    )
    # the test's tmp directories are root's alone: nginx's workers run as root here, not nobody
    nginx = _in_ns("nginx", "-c", nginx_conf, "-g", "daemon off; user root;")
    with _daemon(dnsmasq, "dnsmasq"), _daemon(nginx, "nginx"):
        yield state


def _boot(extra, expect):
    result = qemu.run(_in_ns(*qemu.qemu_command(extra=extra)), expect, timeout=TIMEOUT)
    print(f"\nbooted in {result.seconds:.1f} s" if result.matched else "")
    return result


def test_bios_node_boots_from_real_dnsmasq_and_nginx(servers):
    # QEMU's e1000 PXE ROM is iPXE: dnsmasq sees its user class and sends it to boot.ipxe on nginx.
    tap = ["-boot", "n", "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no", "-device", "e1000,netdev=n0"]
    result = _boot(tap, [STAGE2_UP, "beoboot: powering off"])
    assert result.matched, result.console[-4000:]
    assert f"master http://{MASTER_ADDR}/" in result.console  # the agent's own lease, from dnsmasq
    log = (servers / "dnsmasq.log").read_text()
    assert log.count("DHCPACK(br0) 10.99.0.1") >= 2, log[-3000:]  # iPXE's lease, then the agent's
    fetched = (servers / "access.log").read_text()
    assert "GET /pxe/boot.ipxe" in fetched and "GET /pxe/initrd.img" in fetched


def test_uefi_node_boots_grub_over_dnsmasq_tftp(servers):
    # romfile= drops QEMU's iPXE ROM: OVMF's own PXE asks as an x86-64 UEFI client and dnsmasq's TFTP
    # hands it grubnetx64.efi, which loads the kernel and initrd over TFTP too.
    tap = [
        *qemu.uefi_firmware(),
        "-boot",
        "n",
        "-netdev",
        f"tap,id=n0,ifname={TAP},script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
    ]
    result = _boot(tap, [STAGE2_UP, "beoboot: powering off"])
    assert result.matched, result.console[-4000:]
    log = (servers / "dnsmasq.log").read_text()
    assert "sent" in log and "grubnetx64.efi" in log and "initrd.img" in log, log[-3000:]
