"""The rebuild cache: a build is skipped when its inputs have the same content as the last build's.

The key covers the beoboot code and stage declarations, the effective config, the content of every
build-host file the last build read, and the listings of the directories it searched (a new library that
would shadow an old one changes a listing). The inputs are recorded in the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from beoboot.stages import PROGRAM_PACKAGES, PROJECT_ROOT

CODE_DIRS = ("beoboot", "stages", "templates", *PROGRAM_PACKAGES)


def code_digest() -> str:
    digest = hashlib.sha256()
    for top in CODE_DIRS:
        for directory, subdirs, names in sorted(os.walk(PROJECT_ROOT / top)):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            for name in sorted(names):
                if name.endswith(".pyc"):
                    continue
                path = Path(directory, name)
                digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + b"\0")
                digest.update(path.read_bytes() if not path.is_symlink() else os.readlink(path).encode())
    return digest.hexdigest()


def inputs_key(config_json: str, inputs: Iterable[str]) -> str:
    """Content key of a build. A missing input hashes as missing, so its return is noticed too."""
    digest = hashlib.sha256()
    digest.update(code_digest().encode())
    digest.update(config_json.encode())
    for path in sorted(set(inputs)):
        digest.update(path.encode() + b"\0")
        try:
            if os.path.isdir(path):
                digest.update(b"dir\0" + "\0".join(sorted(os.listdir(path))).encode())
            else:
                digest.update(_file_digest(path))
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()


def _file_digest(path: str) -> bytes:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()
