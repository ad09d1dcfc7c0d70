"""The main job (`python3 build.py demo`): build every image with the embedded default config into ./out
and boot each stage in QEMU to its agent's marker line."""

from __future__ import annotations

import sys
from pathlib import Path

from beoboot import builder, config, log, qemu
from beoboot.stages import PROJECT_ROOT, Stage

# `beoboot.smoke` tells the agent to print its marker and power off instead of doing the stage's work.
SMOKE_APPEND = qemu.DEFAULT_APPEND + " beoboot.smoke"


def main() -> int:
    log.setup()
    outdir = PROJECT_ROOT / "out"
    result = builder.build(config.load(), outdir)
    for art in result.manifest.artifacts:
        print(f"{art.kind:7s} {outdir / art.path}  {art.size / 2**20:6.2f} MiB")
    kernel = outdir / builder.KERNEL_NAME
    failed = 0
    for stage, number in ((Stage.BOOSTER, 1), (Stage.PXE, 2), (Stage.SUPERVISOR, 3)):
        image = outdir / result.manifest.artifact(stage.value).path
        marker = f"beoboot: stage {number} agent up"
        boot = qemu.boot(kernel, image, marker, append=SMOKE_APPEND, timeout=240)
        status = "ok" if boot.matched else "FAILED"
        print(f"boot {stage.value}: {status} in {boot.seconds:.1f}s ({marker!r})")
        if not boot.matched:
            failed += 1
            print(boot.console[-3000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
