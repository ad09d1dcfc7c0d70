"""A small fake kernel module tree for tests: real index text, tiny real ELF modules (with .modinfo)."""

from __future__ import annotations

import struct
from pathlib import Path

VERSION = "1.0.0-test"

MODULES_DEP = """\
kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko: kernel/drivers/ptp/ptp.ko kernel/drivers/pps/pps_core.ko
kernel/drivers/ptp/ptp.ko: kernel/drivers/pps/pps_core.ko
kernel/drivers/pps/pps_core.ko:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.zst kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko.zst: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/net/wireless/intel/iwlwifi/iwlwifi.ko:
kernel/drivers/net/ethernet/realtek/r8169-sub.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/usb/host/uhci-hcd.ko: kernel/drivers/usb/core/usbcore.ko
kernel/drivers/usb/host/ehci-hcd.ko: kernel/drivers/usb/core/usbcore.ko
kernel/drivers/usb/core/usbcore.ko:
kernel/fs/smb/client/cifs.ko:
"""

MODULES_ALIAS = """\
# Aliases extracted from modules themselves.
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias pci:v00008086d00002723sv*sd*bc*sc*i* iwlwifi
alias pci:v000010ECd00008168sv00001028sd*bc*sc*i* r8169_sub
alias crypto-crc32c crc32c_generic
alias crypto-crc32c crc32c_generic
alias fs-ext4 ext4
"""

MODULES_SOFTDEP = """\
# Soft dependencies extracted from modules themselves.
softdep jbd2 pre: crypto-crc32c
softdep ext4 pre: crypto-crc32c post: missing-optional
softdep cifs gcm
"""

MODPROBE_CONF = """\
# site config
softdep uhci-hcd pre: ehci-hcd
"""

MODULES_BUILTIN = "kernel/net/unix/unix.ko\nkernel/drivers/net/ethernet/builtin-nic.ko\n"
BUILTIN_MODINFO = b"unix.alias=net-pf-1\0unix.file=net/unix/unix\0builtin_nic.alias=pci:v0000ABCDd00000001sv*sd*bc*sc*i*\0builtin_nic.file=drivers/net/ethernet/builtin-nic\0"


def fake_module(info: dict[str, list[str]]) -> bytes:
    """A minimal relocatable ELF64 with only a .modinfo section: enough for any ELF reader."""
    modinfo = b"".join(f"{k}={v}".encode() + b"\0" for k, values in info.items() for v in values)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    modinfo_off = 64
    shstr_off = modinfo_off + len(modinfo)
    sh_off = (shstr_off + len(shstrtab) + 7) & ~7
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 2)

    def section(name: int, kind: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, kind, 0, 0, offset, size, 0, 0, 1, 0)

    body = header + modinfo + shstrtab
    body += bytes(sh_off - len(body))
    return (
        body + section(0, 0, 0, 0) + section(1, 1, modinfo_off, len(modinfo)) + section(10, 3, shstr_off, len(shstrtab))
    )


def make_tree(root: Path, version: str = VERSION, with_kernel: bool = True) -> Path:
    """Write a sysroot with one kernel at `root`; compressed modules are real xz/zstd files."""
    import lzma
    import subprocess

    moddir = root / "lib/modules" / version
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text(MODULES_DEP)
    (moddir / "modules.alias").write_text(MODULES_ALIAS)
    (moddir / "modules.softdep").write_text(MODULES_SOFTDEP)
    (moddir / "modules.builtin").write_text(MODULES_BUILTIN)
    (moddir / "modules.builtin.modinfo").write_bytes(BUILTIN_MODINFO)
    conf = root / "etc/modprobe.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "site.conf").write_text(MODPROBE_CONF)
    for line in MODULES_DEP.splitlines():
        rel = line.split(":")[0]
        name = rel.rsplit("/", 1)[1].split(".ko")[0]
        aliases = [a.split()[1] for a in MODULES_ALIAS.splitlines() if a.endswith(" " + name.replace("-", "_"))]
        elf = fake_module({"name": [name], "alias": aliases, "license": ["GPL"]})
        path = moddir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".xz"):
            path.write_bytes(lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32))
        elif rel.endswith(".zst"):
            path.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=elf, capture_output=True, check=True).stdout)
        else:
            path.write_bytes(elf)
    if with_kernel:
        (root / "boot").mkdir(exist_ok=True)
        (root / f"boot/vmlinuz-{version}").write_bytes(b"kernel")
    return root


# e1000e asks for three firmware files: one plain, one .xz, one the sysroot lacks (tests of firmware)
FIRMWARE_PLAIN, FIRMWARE_PACKED, FIRMWARE_ABSENT = (
    "e1000e/plain.bin",
    "e1000e/packed.bin",
    "bnx2x/bnx2x-e2-7.13.21.0.fw",
)
FIRMWARE_PLAIN_BYTES, FIRMWARE_PACKED_BYTES = b"plain firmware", b"packed firmware " * 64
E1000E_PATH = "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko"


def add_firmware(root: Path, version: str = VERSION) -> Path:
    """Give the tree's e1000e `firmware:` entries, and the sysroot the plain and the .xz file."""
    import lzma

    info = {
        "name": ["e1000e"],
        "alias": ["pci:v00008086d000010D3sv*sd*bc*sc*i*"],
        "firmware": [FIRMWARE_PLAIN, FIRMWARE_PACKED, FIRMWARE_ABSENT],
    }
    (root / "lib/modules" / version / E1000E_PATH).write_bytes(fake_module(info))
    fw = root / "lib/firmware"
    (fw / FIRMWARE_PLAIN).parent.mkdir(parents=True)
    (fw / FIRMWARE_PLAIN).write_bytes(FIRMWARE_PLAIN_BYTES)
    packed = lzma.compress(FIRMWARE_PACKED_BYTES, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    (fw / f"{FIRMWARE_PACKED}.xz").write_bytes(packed)
    return root
