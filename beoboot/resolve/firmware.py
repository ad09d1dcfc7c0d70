"""Firmware files that kernel modules ask for: their `firmware:` modinfo entries, found in the sysroot.

The kernel's loader reads /lib/firmware/NAME, and NAME.xz or NAME.zst only when it was built with
CONFIG_FW_LOADER_COMPRESS_XZ or _ZSTD (`decompress_for`): a file in a form the kernel cannot read is
decompressed when an image is built (beoboot.image.assemble). A file the sysroot lacks is named, with the
Debian package that ships it (FIRMWARE_PACKAGES), by `beoboot-build nics --check` and `inspect`.
"""

from __future__ import annotations

from dataclasses import dataclass

from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.sysroot import Sysroot

FIRMWARE_DIRS = ("/lib/firmware", "/usr/lib/firmware")
# suffix -> the kernel config that makes the loader read it
COMPRESSED_FORMS = {".xz": "CONFIG_FW_LOADER_COMPRESS_XZ", ".zst": "CONFIG_FW_LOADER_COMPRESS_ZSTD"}
# The Debian package (non-free-firmware) that ships firmware under a path prefix; the first match counts.
FIRMWARE_PACKAGES = (
    ("bnx2x/", "firmware-bnx2x"),
    ("bnx2/", "firmware-bnx2"),
    ("rtl_nic/", "firmware-realtek"),
    ("rtlwifi/", "firmware-realtek"),
    ("rtl_bt/", "firmware-realtek"),
    ("qed/", "firmware-qlogic"),
    ("ql2", "firmware-qlogic"),
    ("qlogic/", "firmware-qlogic"),
    ("phanfw", "firmware-qlogic"),  # netxen_nic, qlcnic
    ("ctfw-", "firmware-qlogic"),  # bna (Brocade, now QLogic)
    ("ct2fw-", "firmware-qlogic"),
    ("myri10ge", "firmware-myricom"),
    ("netronome/", "firmware-netronome"),
    ("liquidio/", "firmware-cavium"),
    ("iwlwifi-", "firmware-iwlwifi"),
    ("amdgpu/", "firmware-amd-graphics"),
    ("radeon/", "firmware-amd-graphics"),
    ("tigon/", "firmware-misc-nonfree"),
    ("e100/", "firmware-misc-nonfree"),
    ("intel/", "firmware-misc-nonfree"),
    ("i915/", "firmware-misc-nonfree"),
    ("mellanox/", "firmware-misc-nonfree"),
    ("nvidia/", "firmware-misc-nonfree"),
    ("cxgb4/", "firmware-misc-nonfree"),
    ("cxgb3/", "firmware-misc-nonfree"),
)
UNKNOWN_PACKAGE = "firmware-misc-nonfree?"  # most of the rest; `apt-file search NAME` tells for sure


def package_for(name: str) -> str:
    return next((package for prefix, package in FIRMWARE_PACKAGES if name.startswith(prefix)), UNKNOWN_PACKAGE)


@dataclass(frozen=True)
class Firmware:
    module: str
    name: str  # as the module asks for it: "bnx2x/bnx2x-e2-7.13.21.0.fw"
    path: str | None  # sysroot path of the file found (maybe NAME.xz or NAME.zst), None when missing

    @property
    def suffix(self) -> str:
        """ "" for a plain file, else its compression's suffix (".xz", ".zst")."""
        return next((s for s in COMPRESSED_FORMS if self.path and self.path.endswith(s)), "")

    @property
    def package(self) -> str:
        return package_for(self.name)


def find(sysroot: Sysroot, name: str) -> str | None:
    """The sysroot path of firmware NAME: plain first (as the kernel tries it), then NAME.xz, NAME.zst."""
    if not name or name.startswith("/") or ".." in name.split("/"):
        return None  # not a name under /lib/firmware
    for directory in FIRMWARE_DIRS:
        for suffix in ("", *COMPRESSED_FORMS):
            path = f"{directory}/{name}{suffix}"
            if sysroot.is_file(path):
                return path
    return None


def of_modules(kmods: KernelModules, modules: list[str]) -> list[Firmware]:
    """Every firmware file the modules name, found or not, in module order."""
    out: list[Firmware] = []
    for module in modules:
        for name in dict.fromkeys(kmods.modinfo(module).get("firmware", ())):
            out.append(Firmware(module, name, find(kmods.sysroot, name)))
    return out


def decompress_for(sysroot: Sysroot, version: str) -> frozenset[str]:
    """The compressed forms the kernel's firmware loader reads itself, from its /boot/config-VERSION
    (none when the config is missing: decompressing is always safe)."""
    path = f"/boot/config-{version}"
    if not sysroot.is_file(path):
        return frozenset()
    text = sysroot.host(sysroot.resolve(path).real).read_text(errors="replace")
    enabled = {line.partition("=")[0] for line in text.splitlines() if line.endswith("=y")}
    return frozenset(suffix for suffix, option in COMPRESSED_FORMS.items() if option in enabled)


def watched_directories(sysroot: Sysroot, missing: list[Firmware]) -> set[str]:
    """Build-host directories whose listing changes when a missing file is installed (the nearest one that
    exists on the way to it): inputs of the rebuild cache, so that installing the package rebuilds."""
    found = set()
    for fw in missing:
        for directory in FIRMWARE_DIRS:
            path = sysroot.host(f"{directory}/{fw.name}").parent
            while not path.is_dir() and path != path.parent:
                path = path.parent
            found.add(str(path))
    return found
