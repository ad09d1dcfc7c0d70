"""The firmware files of an image's modules: each `firmware:` entry the sysroot has goes in at its path
under /lib/firmware, in a form the image's kernel reads (a .xz or .zst file it cannot read is put in
decompressed); the ones the sysroot lacks are returned, for the manifest and `inspect` to name."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from beoboot.image.filelist import FileList, Reason
from beoboot.resolve import firmware
from beoboot.resolve.kmod import KernelModules, decompress_module

log = logging.getLogger("beoboot.image.firmwarefiles")


def add_firmware(files: FileList, kmods: KernelModules, modules: Iterable[str]) -> list[firmware.Firmware]:
    """Add the firmware of `modules`; the files missing from the sysroot."""
    sysroot = kmods.sysroot
    readable = firmware.decompress_for(sysroot, kmods.version)
    missing = []
    for fw in firmware.of_modules(kmods, list(dict.fromkeys(modules))):
        if fw.path is None:
            missing.append(fw)
            continue
        reason = Reason(f"firmware of {fw.module}")
        if fw.suffix and fw.suffix not in readable:
            resolved = sysroot.resolve(fw.path)
            for link, target in resolved.links:
                files.add_symlink(link, target, Reason(f"link on the way to {resolved.real}"))
            plain = resolved.real[: -len(fw.suffix)]
            data = decompress_module(sysroot.host(resolved.real).read_bytes(), resolved.real)
            files.add_bytes(
                plain,
                data,
                Reason(f"firmware of {fw.module}, decompressed: kernel {kmods.version} reads no {fw.suffix}"),
            )
        else:
            files.add_from_sysroot(sysroot, fw.path, reason)
    if missing:  # one line, not one per file: "all" NIC drivers name a few hundred
        drivers = sorted({fw.module for fw in missing})
        packages = sorted({fw.package for fw in missing})
        log.warning(
            "%d firmware files missing from the sysroot for %d drivers (%s); Debian: %s. "
            "`beoboot-build inspect IMAGE` names them",
            len(missing),
            len(drivers),
            " ".join(drivers[:8]) + (" ..." if len(drivers) > 8 else ""),
            " ".join(packages),
        )
    return missing
