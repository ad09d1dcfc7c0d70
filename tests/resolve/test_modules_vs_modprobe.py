"""Our load order against `modprobe --show-depends` for every NIC alias of the installed kernel.

"Every NIC alias" = every pci: and virtio: alias in nic_table(): all loadable modules under
kernel/drivers/net/ (Ethernet, Wi-Fi, CAN, WAN, ...) plus the virtio_pci transport. modprobe prints
duplicates (a module reached both as a dependency and through a softdep) and `builtin X` lines; we load
each module once and skip builtin ones, so its list is compared with duplicates and builtin lines removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from beoboot.errors import ModuleError
from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.nics import nic_table
from beoboot.resolve.sysroot import Sysroot

MODPROBE = shutil.which("modprobe") or ("/usr/sbin/modprobe" if os.path.exists("/usr/sbin/modprobe") else None)


def modprobe_load_order(version: str, alias: str) -> list[str] | None:
    """insmod paths in order, first occurrences only; None if modprobe finds nothing."""
    done = subprocess.run(
        [MODPROBE, "-S", version, "--show-depends", alias], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return None
    paths = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("insmod ")]
    return list(dict.fromkeys(paths))


def our_load_order(kmods: KernelModules, alias: str) -> list[str] | None:
    try:
        return [need.path for need in kmods.resolve([alias])]
    except ModuleError:
        return None


@pytest.mark.integration
@pytest.mark.skipif(MODPROBE is None, reason="kmod's modprobe not installed")
def test_every_nic_alias_resolves_like_modprobe() -> None:
    try:
        kmods = KernelModules.latest(Sysroot("/"))
    except ModuleError:
        pytest.skip("no kernel installed on this host")
    aliases = sorted({row.pattern for row in nic_table(kmods)})
    assert len(aliases) > 100, "expected the NIC aliases of a distribution kernel"

    start = time.monotonic()
    ours = {alias: our_load_order(kmods, alias) for alias in aliases}
    ours_seconds = time.monotonic() - start

    start = time.monotonic()
    # modprobe takes a few ms an alias; two workers keep the shared cores usable for others.
    with ThreadPoolExecutor(max_workers=2) as pool:
        theirs = dict(zip(aliases, pool.map(lambda a: modprobe_load_order(kmods.version, a), aliases)))
    modprobe_seconds = time.monotonic() - start

    print(f"\n{len(aliases)} aliases: beoboot {ours_seconds:.2f}s, modprobe {modprobe_seconds:.2f}s")
    differing = {a: (ours[a], theirs[a]) for a in aliases if ours[a] != theirs[a]}
    assert not differing, f"{len(differing)} of {len(aliases)} differ, e.g. {next(iter(differing.items()))}"


@pytest.mark.skipif(MODPROBE is None, reason="kmod's modprobe not installed")
def test_sample_of_nic_aliases_resolves_like_modprobe() -> None:
    """Every 25th NIC alias (about 100): the quick version of the test above, run by a plain `pytest`."""
    try:
        kmods = KernelModules.latest(Sysroot("/"))
    except ModuleError:
        pytest.skip("no kernel installed on this host")
    aliases = sorted({row.pattern for row in nic_table(kmods)})[::25] + ["virtio:d00000001v*", "e1000e", "ext4"]
    for alias in aliases:
        assert our_load_order(kmods, alias) == modprobe_load_order(kmods.version, alias), alias
