"""The sysroots of other Debian releases that `python3 build.py setup` makes (debootstrap), for the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _build_py():
    spec = importlib.util.spec_from_file_location("beoboot_build_py", ROOT / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sysroot(suite: str) -> Path | None:
    """SYSROOTS/SUITE when setup finished making it (its stamp says so), else None."""
    build = _build_py()
    return build.SYSROOTS / suite if build.sysroot_ready(suite) else None


SKIP_REASON = "no {suite} sysroot: python3 build.py setup makes it (debootstrap from deb.debian.org)"
