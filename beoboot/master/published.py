"""What beoserv may serve from the boot tree: the published build's manifest.json and the files it lists.

The build is the one `ROOT/current` names (beoboot.image.outputs), resolved once per request so the manifest
and the file come from the same build even while a new one is being published; a tree without `current`
(from a beoboot before that layout) is its own build. Anything the manifest does not list is not
published: an unfinished build, a dot directory, a file someone left in the tree.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from beoboot.image.manifest import MANIFEST_NAME
from beoboot.image.outputs import CURRENT
from beoboot.master.exhaustion import exhausted
from beoboot.master.nextboot import PublishedBoot, from_manifest

log = logging.getLogger("beoserv")


class NotPublished(Exception):
    """The path is not a file of the published build."""


@dataclass(frozen=True)
class _Listing:
    key: tuple[int, int, int, int]  # (device, inode, mtime_ns, size) of the manifest it was read from
    paths: frozenset[str]
    boot: PublishedBoot | None = None  # what a node booting now gets (beoboot.master.nextboot)


class PublishedTree:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._listing: _Listing | None = None

    def build_dir(self) -> Path:
        """The real directory of the published build."""
        current = self.root / CURRENT
        return Path(os.path.realpath(current if os.path.lexists(current) else self.root))

    def file(self, relative: str) -> Path:
        """The real path of published file `relative`, or NotPublished."""
        build = self.build_dir()
        parts = PurePosixPath(relative).parts
        if not parts or any(part.startswith(".") or part == "/" for part in parts):
            raise NotPublished(relative)  # "..", dot directories: never listed, so never looked up
        relative = str(PurePosixPath(*parts))
        if relative != MANIFEST_NAME and relative not in self._listed(build):
            raise NotPublished(relative)
        path = Path(os.path.realpath(build / relative))
        if not path.is_relative_to(build) or not path.is_file():
            raise NotPublished(relative)
        return path

    def boot(self) -> PublishedBoot | None:
        """What a node booting now gets: the published kernel release and image hashes (None: no build)."""
        return self._listing_of(self.build_dir()).boot

    def _listed(self, build: Path) -> frozenset[str]:
        """The artifact paths of `build`'s manifest, read again only when the manifest file changed."""
        return self._listing_of(build).paths

    def _listing_of(self, build: Path) -> _Listing:
        manifest = build / MANIFEST_NAME
        try:
            st = manifest.stat()
        except OSError:
            return _Listing((0, 0, 0, 0), frozenset())  # nothing built yet
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if self._listing is None or self._listing.key != key:
            self._listing = _read(manifest, key)
        return self._listing


def _read(manifest: Path, key: tuple[int, int, int, int]) -> _Listing:
    """The manifest's paths and boot facts; an OSError for want of a resource (EMFILE) is raised, not taken
    for an empty manifest, which would be remembered and have every file answered "not published"."""
    try:
        raw = json.loads(manifest.read_bytes())
        paths = frozenset(str(PurePosixPath(a["path"])) for a in raw["artifacts"])
        return _Listing(key, paths, from_manifest(raw))
    except OSError as exc:
        if exhausted(exc):
            raise
        log.error("cannot read %s (%s): serving nothing from it until it changes", manifest, exc.strerror or exc)
        return _Listing(key, frozenset())
    except (ValueError, KeyError, TypeError) as exc:
        log.error(
            "%s is not a beoboot manifest (%s): serving nothing from it; rebuild with beoboot-build", manifest, exc
        )
        return _Listing(key, frozenset())
