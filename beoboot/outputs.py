"""Atomic outputs: everything is written into a staging directory inside OUTDIR, then renamed into place,
the manifest last. A failed or interrupted build leaves the previous outputs as they were and no partial
file (a leftover staging directory of a killed build is removed by the next one)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

STAGING_PREFIX = ".beoboot-staging-"


class Staging:
    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        outdir.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(outdir)
        self.path = outdir / f"{STAGING_PREFIX}{os.getpid()}"
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, names: Iterable[str], last: str, stale: Iterable[str] = ()) -> None:
        """Rename every staged file into OUTDIR, `last` (the manifest) at the end; then drop stale outputs."""
        keep = set(names) | {last}
        for name in sorted(set(names)):
            target = self.outdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / name, target)
        os.replace(self.path / last, self.outdir / last)
        for name in stale:
            if name not in keep:
                (self.outdir / name).unlink(missing_ok=True)


def remove_stale_staging(outdir: Path) -> None:
    for leftover in outdir.glob(f"{STAGING_PREFIX}*"):
        pid = leftover.name[len(STAGING_PREFIX):]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another build is running in this directory right now
        shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
