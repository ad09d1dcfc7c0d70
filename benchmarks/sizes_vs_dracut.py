#!/usr/bin/env python3
"""Every image's size beside dracut's `--hostonly` and `--no-hostonly` initramfs for the same kernel, in one run.

Two beoboot builds: the embedded default (every Ethernet driver in stages 1 and 2), and a site that names
its NICs with an lspci dump (`drivers = "lspci:FILE"`, by default QEMU's e1000). Each image is shown with
its compressor and its size as a fraction of each dracut image (dracut with its own default compressor).

Targets: stage 2 with every Ethernet driver <= 11 MiB; with a site's drivers <= 5 MiB.

    .venv/bin/python benchmarks/sizes_vs_dracut.py [--lspci FILE]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from beoboot import config, log
from beoboot.image import builder
from beoboot.image.compress import detect
from beoboot.image.manifest import load_manifest
from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.sysroot import Sysroot

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {("default", "stage2"): 11, ("site", "stage2"): 5}  # MiB


def dracut(version: str, image: Path, hostonly: bool) -> tuple[int, str, str]:
    """Size, compressor, and a note when dracut could not do what was asked (no /proc/modules in a container:
    its host-only image then takes every module of the kinds it needs, and is larger than on a real host)."""
    mode = "--hostonly" if hostonly else "--no-hostonly"
    done = subprocess.run(
        ["dracut", mode, "--force", "--quiet", "--kver", version, str(image)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    note = " (no loaded-module list here: dracut took modules non-host-only)" if "non-hostonly" in done.stderr else ""
    with open(image, "rb") as f:
        return image.stat().st_size, detect(f.read(8)).value, note


def beoboot_images(cfg: config.Config, out: Path) -> list[tuple[str, int, str]]:
    builder.build(cfg, out)
    return [(a.name, a.size, a.compression or "") for a in load_manifest(out).artifacts if a.kind == "image"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lspci", type=Path, default=ROOT / "tests/data/lspci-qemu-e1000.txt", help="the site's dump")
    args = parser.parse_args()
    if shutil.which("dracut") is None:
        print("dracut not installed (apt-get install dracut-core)", file=sys.stderr)
        return 2
    log.setup(quiet=True)
    version = KernelModules.latest(Sysroot("/")).version
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site.toml"
        dump = f"lspci:{args.lspci.resolve()}"
        site.write_text(f'[images.stage1]\ndrivers = "{dump}"\n[images.stage2]\ndrivers = "{dump}"\n')
        rows = [("default", *row) for row in beoboot_images(config.load(), Path(tmp) / "default")]
        rows += [("site", *row) for row in beoboot_images(config.load(site), Path(tmp) / "site")]
        hostonly, hostonly_kind, note = dracut(version, Path(tmp) / "hostonly.img", True)
        generic, generic_kind, _ = dracut(version, Path(tmp) / "generic.img", False)
    print(f"kernel {version}; site drivers from {args.lspci.name}")
    print(f"dracut --hostonly    {hostonly / 2**20:7.2f} MiB ({hostonly_kind}){note}")
    print(f"dracut --no-hostonly {generic / 2**20:7.2f} MiB ({generic_kind})")
    print(f"{'image':20s}{'MiB':>8s}  {'':5s}{'/hostonly':>10s}{'/no-hostonly':>13s}")
    for build, name, size, kind in rows:
        target = TARGETS.get((build, name))
        verdict = f"   target <= {target} MiB: {'ok' if size <= target * 2**20 else 'MISSED'}" if target else ""
        ratios = f"{size / hostonly:10.3f}{size / generic:13.3f}"
        print(f"{build + ' ' + name:20s}{size / 2**20:8.3f}  {kind:5s}{ratios}{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
