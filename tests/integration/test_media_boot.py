"""Every artifact of a real build boots in QEMU (TCG) to the stage-2 agent's marker, with the options of
beoboot/vm/bootvm.py (the same code `beoboot-build boot` runs); the parsers and plans are table-tested."""

import hashlib
import json
import re
import urllib.request
from pathlib import Path

import pytest
from conftest import have_kernel, run_beoboot
from servers import access_log_statuses, free_port, nginx

from beoboot.errors import ConfigError, UsageError
from beoboot.vm import bootvm
from beoboot.vm.bootvm import ArtifactKind, BootOptions, BootTarget, BuildInfo, NetBoot

STAGE2_UP = "beoboot: stage 2 agent up"
TIMEOUT = 180.0


# --- parsers and plans (fast) --------------------------------------------------------------------------


def _iso_head():
    head = bytearray(0x8800)
    head[0x8001:0x8006] = b"CD001"
    head[510:512] = b"\x55\xaa"  # isohybrid: an MBR as well
    return bytes(head)


def _mbr(size=512):
    head = bytearray(size)
    head[510:512] = b"\x55\xaa"
    return bytes(head)


@pytest.mark.parametrize(
    "head, size, kind",
    [
        (_iso_head(), 26_214_400, ArtifactKind.ISO),
        (_mbr(), 1_474_560, ArtifactKind.FLOPPY),
        (_mbr(), 2_949_120, ArtifactKind.FLOPPY),
        (_mbr(), 8_000_000, ArtifactKind.DISK),
        (b"\x28\xb5\x2f\xfd" + b"\0" * 60, 100, ArtifactKind.STAGE_IMAGE),  # zstd
        (b"\x1f\x8b\x08" + b"\0" * 60, 100, ArtifactKind.STAGE_IMAGE),  # gzip
        (b"070701" + b"0" * 60, 100, ArtifactKind.STAGE_IMAGE),  # plain newc cpio
        (b"root:x:0:0", 10, None),
        (b"", 0, None),
    ],
)
def test_sniff(head, size, kind):
    assert bootvm.sniff(head, size) is kind


@pytest.mark.parametrize(
    "url, host, port",
    [
        ("http://10.0.2.2:8080/", "10.0.2.2", 8080),
        ("http://10.54.0.1/", "10.54.0.1", 80),
        ("http://192.168.7.3:9000", "192.168.7.3", 9000),
    ],
)
def test_parse_master_url(url, host, port):
    master = bootvm.parse_master_url(url)
    assert (str(master.host), master.port) == (host, port)


@pytest.mark.parametrize(
    "url, says",
    [
        ("https://10.0.2.2/", "not http://"),
        ("http://master.cluster:8080/", "IPv4"),
        ("http://127.0.0.1:8080/", "cannot be a master"),
        ("http://10.0.2.2:99999/", "10.0.2.2:99999"),
    ],
)
def test_parse_master_url_rejects(url, says):
    with pytest.raises(ConfigError) as err:
        bootvm.parse_master_url(url)
    assert url in str(err.value) and (says in str(err.value) or says in (err.value.hint or ""))


@pytest.mark.parametrize(
    "host, options",
    [
        ("10.0.2.2", "net=10.0.2.0/24,host=10.0.2.2,dhcpstart=10.0.2.15,dns=10.0.2.3"),  # QEMU's own defaults
        ("10.54.0.1", "net=10.54.0.0/24,host=10.54.0.1,dhcpstart=10.54.0.15,dns=10.54.0.3"),
        ("10.54.0.20", "net=10.54.0.0/24,host=10.54.0.20,dhcpstart=10.54.0.100,dns=10.54.0.3"),  # in slirp's DHCP range
        ("10.54.0.3", "net=10.54.0.0/24,host=10.54.0.3,dhcpstart=10.54.0.15,dns=10.54.0.4"),  # slirp's DNS address
    ],
)
def test_slirp_makes_the_master_the_host(host, options):
    assert bootvm.parse_master_url(f"http://{host}:8080/").slirp_options == options


STAGE2_LINE = (
    "console=ttyS0 panic=10 beoboot.master=http://10.0.2.2:8080/ beoboot.pin.stage3=S3 beoboot.pin.envroot=E x=1"
)
HASHES = {"kernel": "K", "stage2": "S2", "stage3": "S3", "envroot": "E", "beoboot.iso": "I"}
# What each stage fetches next, and so must find pinned on its command line (stages/*.toml: fetches)
PINNED_BY = {
    "stage1": ("kernel", "stage2", "stage3", "envroot"),  # stage 1 hands the last two on to stage 2
    "stage2": ("stage3", "envroot"),  # stage 2 hands envroot on to stage 3
    "stage3": ("envroot",),
}


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3", "envroot"])
def test_stage_command_line_has_the_stages_pins(stage):
    words = bootvm.stage_command_line(STAGE2_LINE, stage, HASHES).split()
    pins = [w for w in words if w.startswith("beoboot.pin.")]
    assert pins == [f"beoboot.pin.{name}={HASHES[name]}" for name in PINNED_BY.get(stage, ())]
    # the rest of the stage-2 line is kept, in order, with the pins right after the master
    assert [w for w in words if w not in pins] == [w for w in STAGE2_LINE.split() if not w.startswith("beoboot.pin.")]
    assert words[words.index("beoboot.master=http://10.0.2.2:8080/") + 1 : len(pins) + 3] == pins


def test_parse_pxelinux_append():
    text = "DEFAULT beoboot\nLABEL beoboot\n  KERNEL vmlinuz\n  APPEND console=ttyS0 beoboot.master=http://m/ \n"
    assert bootvm.parse_pxelinux_append(text) == "console=ttyS0 beoboot.master=http://m/"
    assert bootvm.command_line_word("a=1 beoboot.master=http://m/ b", "beoboot.master") == "http://m/"
    with pytest.raises(ConfigError, match="no APPEND"):
        bootvm.parse_pxelinux_append("DEFAULT x\n")


MASTER = bootvm.parse_master_url("http://10.0.2.2:8080/")


def _nic_option(args):
    return next(args[i + 1] for i, a in enumerate(args) if a == "-nic" and args[i + 1].startswith("user"))


@pytest.mark.parametrize(
    "kind, options, has, nic_has",
    [
        (ArtifactKind.ISO, BootOptions(), ["-cdrom"], ["model=e1000", "host=10.0.2.2"]),
        (ArtifactKind.ISO, BootOptions(uefi=True), ["-cdrom", "if=pflash"], []),
        (ArtifactKind.DISK, BootOptions(), ["usb-storage,bus=xhci.0,drive=stick,bootindex=1"], []),
        (ArtifactKind.FLOPPY, BootOptions(nic="rtl8139"), ["-boot", "a"], ["model=rtl8139"]),
        (ArtifactKind.PXE_TREE, BootOptions(), ["-boot", "n"], ["bootfile=pxelinux.0", "tftp=/b/pxe"]),
        (ArtifactKind.PXE_TREE, BootOptions(uefi=True), ["-boot", "n"], ["bootfile=grubnetx64.efi"]),
        (
            ArtifactKind.PXE_TREE,
            BootOptions(net_boot=NetBoot.IPXE),
            ["-boot", "n"],
            ["bootfile=http://10.0.2.2:8080/pxe/boot.ipxe"],
        ),
    ],
)
def test_plan_boot_media(kind, options, has, nic_has):
    path = Path("/b/pxe" if kind is ArtifactKind.PXE_TREE else "/b/x")
    plan = bootvm.plan_boot(BootTarget(kind, path, Path("/b")), options, master=MASTER)
    args = list(plan.extra)
    joined = " ".join(args)
    assert all(h in joined for h in has), args
    assert all(h in _nic_option(args) for h in nic_has), args
    assert plan.kernel is None and plan.serve_root == Path("/b")
    assert ("virtio-rng-pci" in plan.command()) and "-serial" in plan.command()


def test_plan_boot_stage_image_uses_the_build_kernel_and_stage_pins(tmp_path):
    image = tmp_path / "stage1.cpio.zst"
    image.write_bytes(b"\x28\xb5\x2f\xfd stage one")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    build = BuildInfo(tmp_path, tmp_path / "vmlinuz", {digest: "stage1"}, HASHES, STAGE2_LINE)
    target = BootTarget(ArtifactKind.STAGE_IMAGE, image, tmp_path)
    plan = bootvm.plan_boot(target, BootOptions(append="beoboot.smoke"), build=build, master=MASTER)
    assert (plan.kernel, plan.initrd) == (tmp_path / "vmlinuz", image)
    assert "beoboot.pin.stage2=S2" in plan.append and plan.append.endswith("x=1 beoboot.smoke")
    other = tmp_path / "other.cpio.gz"
    other.write_bytes(b"\x1f\x8b not in the build")
    with pytest.raises(UsageError, match="not an image of the build"):
        bootvm.plan_boot(BootTarget(ArtifactKind.STAGE_IMAGE, other, tmp_path), BootOptions(), build=build)


@pytest.mark.parametrize(
    "options, says",
    [
        (BootOptions(uefi=True, net_boot=NetBoot.PXELINUX), "BIOS program"),
        (BootOptions(net_boot=NetBoot.GRUB), "needs --uefi"),
    ],
)
def test_plan_boot_rejects_firmware_mismatch(options, says):
    with pytest.raises(UsageError, match=says):
        bootvm.plan_boot(BootTarget(ArtifactKind.PXE_TREE, Path("/b/pxe"), None), options, master=MASTER)


@pytest.mark.parametrize("nic", ["e1000,romfile=/x", "E1000", ""])
def test_boot_options_reject_nic_that_is_not_a_device_name(nic):
    with pytest.raises(UsageError, match="NIC model"):
        BootOptions(nic=nic)


def test_classify_rejects_what_is_not_an_artifact(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="not an ISO"):
        bootvm.classify(tmp_path / "notes.txt")
    with pytest.raises(UsageError, match="no pxelinux.0"):
        bootvm.classify(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        bootvm.classify(tmp_path / "missing.iso")


def test_serve_directory_serves_the_build_on_loopback(tmp_path):
    (tmp_path / "pxe").mkdir()
    (tmp_path / "pxe" / "boot.ipxe").write_text("#!ipxe\n")
    with bootvm.serve_directory(tmp_path, free_port()) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}pxe/boot.ipxe", timeout=5) as reply:
            assert reply.read() == b"#!ipxe\n"


# --- QEMU boots of a real build (integration) ------------------------------------------------------------

SECONDS: dict[str, float] = {}  # per boot, printed at the end of the module (pytest -s)


@pytest.fixture(scope="module")
def port():
    return free_port()


@pytest.fixture(scope="module")
def out(tmp_path_factory, port):
    """One build whose ISO carries stage 2 and whose master is the host's 127.0.0.1:`port`."""
    if not have_kernel():
        pytest.skip("needs a kernel in /boot and QEMU: run `python3 build.py setup`")
    outdir = tmp_path_factory.mktemp("media-out")
    site = outdir.parent / "media-site.toml"
    site.write_text(f'[build]\nmaster_url = "http://10.0.2.2:{port}/"\n\n[artifacts]\niso_stage = "stage2"\n')
    run_beoboot("build", "-q", "-c", site, "-o", outdir)
    yield outdir
    if SECONDS:
        print("\nseconds from QEMU start to the marker:")
        for name, seconds in SECONDS.items():
            print(f"  {name:28s} {seconds:6.1f}")


@pytest.fixture
def master(out, port, tmp_path):
    """nginx serving the build directory at the master URL (function scope: the CLI test needs it down)."""
    with nginx(out, tmp_path / "nginx", port=port):
        yield tmp_path / "nginx"


def _boot(name, path, expect=STAGE2_UP, *, usb=False, **options):
    plan = bootvm.plan_artifact(path, BootOptions(**options), usb=usb)
    result = bootvm.boot(plan, expect, timeout=TIMEOUT)
    assert result.matched, f"{name}: no {expect!r} in {result.seconds:.0f} s:\n{result.console[-4000:]}"
    SECONDS[name] = result.seconds
    return result


def _fetched(master_dir):
    log = (master_dir / "access.log").read_text()
    return [line.split('"')[1] for line in log.splitlines()]


@pytest.mark.integration
def test_boot_command_serves_the_build_itself_when_no_master_listens(out, port):
    assert not bootvm.port_in_use(port)
    done = run_beoboot(
        "boot",
        out,
        "--net-boot",
        "ipxe",
        "--expect",
        STAGE2_UP,
        "--timeout",
        TIMEOUT,
        check=False,
        timeout=TIMEOUT + 30,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    assert STAGE2_UP in done.stdout
    assert f"serving {out}" in done.stderr and "matched after" in done.stderr
    SECONDS["boot command: iPXE, own http"] = float(re.search(r"matched after ([\d.]+) s", done.stderr).group(1))


ISO_WAYS = {
    "iso-cdrom-seabios": {},
    "iso-cdrom-ovmf": {"uefi": True},
    "iso-usb-disk-seabios": {"usb": True},
}


@pytest.mark.integration
@pytest.mark.parametrize("way", ISO_WAYS)
def test_iso_boots_stage2(out, way):
    _boot(way, out / "beoboot.iso", **ISO_WAYS[way])


@pytest.mark.integration
def test_floppy_booster_fetches_stage2_over_http(out, master):
    _boot("floppy-ipxe-http", out / "floppy.img")
    fetched = _fetched(master)
    assert "GET /pxe/boot.ipxe HTTP/1.1" in fetched and "GET /pxe/initrd.img HTTP/1.1" in fetched
    assert set(access_log_statuses(master)) == {200}


@pytest.mark.integration
def test_pxelinux_boots_over_qemu_tftp(out):
    _boot("pxe-bios-pxelinux-tftp", out / "pxe")


@pytest.mark.integration
def test_ipxe_boots_over_http(out, master):
    _boot("ipxe-bios-http", out / "pxe", net_boot=NetBoot.IPXE)
    assert "GET /pxe/vmlinuz HTTP/1.1" in _fetched(master)


@pytest.mark.integration
def test_manifest_lists_what_was_booted(out):
    names = {a["path"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert {"beoboot.iso", "floppy.img", "pxe/pxelinux.0", "pxe/grubnetx64.efi", "pxe/boot.ipxe"} <= names
