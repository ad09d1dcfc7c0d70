#!/usr/bin/env python3
"""Cold build of the four images vs `dracut --no-hostonly` for the same kernel, in one run, side by side.

Target: beoboot's cold build takes at most 1/5 of dracut's time; an unchanged rebuild < 0.5 s. Also shown:
a build for another site (its master's address changed) that finds the compressed parts of the cold
build in the part cache (beoboot.image.partcache), which is empty for the cold build.

    .venv/bin/python benchmarks/build_vs_dracut.py
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beoboot import config, log
from beoboot.image import builder
from beoboot.image.manifest import load_manifest
from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.sysroot import Sysroot


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main() -> int:
    log.setup(quiet=True)
    cfg = config.load()
    version = KernelModules.latest(Sysroot("/")).version
    other_site = dataclasses.replace(cfg, master_url="http://10.1.2.3:8080/")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BEOBOOT_CACHE_DIR"] = str(Path(tmp) / "cache")  # empty: the cold build compresses all
        out = Path(tmp) / "out"
        cold = timed(lambda: builder.build(cfg, out))
        sizes = {a.name: a.size for a in load_manifest(out).artifacts}
        warm = timed(lambda: builder.build(cfg, out))
        kept = timed(lambda: builder.build(other_site, Path(tmp) / "other"))
        dracut_img = Path(tmp) / "dracut.img"
        if shutil.which("dracut") is None:
            print("dracut not installed (apt-get install dracut-core)", file=sys.stderr)
            return 2
        dracut = timed(
            lambda: subprocess.run(
                ["dracut", "--no-hostonly", "--force", "--quiet", "--kver", version, str(dracut_img)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        )
        dracut_size = dracut_img.stat().st_size
    print(f"kernel {version}")
    print(f"{'':28s}{'beoboot':>12s}{'dracut':>12s}{'ratio':>9s}")
    print(f"{'cold build (s)':28s}{cold:12.2f}{dracut:12.2f}{cold / dracut:9.3f}   target <= 0.200")
    print(f"{'unchanged rebuild (s)':28s}{warm:12.3f}{'':12s}{'':9s}   target < 0.5 s")
    print(f"{'other site, parts kept (s)':28s}{kept:12.2f}{dracut:12.2f}{kept / dracut:9.3f}")
    for name, size in sizes.items():
        print(f"{'size ' + name + ' (MiB)':28s}{size / 2**20:12.2f}")
    print(f"{'size dracut initramfs (MiB)':28s}{'':12s}{dracut_size / 2**20:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
