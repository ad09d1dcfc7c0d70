"""Read back what an image holds and why, from the manifest written beside it."""

from __future__ import annotations

import posixpath
from collections import defaultdict
from dataclasses import dataclass

from beoboot.errors import BeobootError
from beoboot.image.manifest import FileRecord

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@dataclass(frozen=True)
class Group:
    reason: str
    files: list[FileRecord]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def category(reason: str) -> str:
    """Fold reasons that differ only in their object into one group (one NIC driver per alias is noise)."""
    if reason.startswith("NIC driver for"):
        return "NIC drivers"
    if reason.startswith(("dependency of", "softdep of")):
        return "kernel module dependencies"
    if reason.startswith("link on the way to"):
        return "symbolic links on library paths"
    return reason


def group_by_reason(records: list[FileRecord]) -> list[Group]:
    groups: dict[str, list[FileRecord]] = defaultdict(list)
    for record in records:
        groups[category(record.reason)].append(record)
    return sorted((Group(r, fs) for r, fs in groups.items()), key=lambda g: (-g.size, g.reason))


def resolve_in_image(records: dict[str, FileRecord], path: str) -> str:
    """Follow the image's own symbolic links, component by component, to the path of a record."""
    parts = [p for p in posixpath.normpath("/" + path.lstrip("/")).split("/") if p]
    current = "/"
    for hops, _ in enumerate(iter(int, 1)):
        if not parts:
            return current
        if hops > 40:
            break
        candidate = posixpath.join(current, parts.pop(0))
        record = records.get(candidate)
        if record is not None and record.kind == "symlink" and record.target:
            base = "/" if record.target.startswith("/") else current
            target = posixpath.normpath(posixpath.join(base, record.target))
            parts = [p for p in target.split("/") if p] + parts
            current = "/"
            continue
        current = candidate
    raise BeobootError(f"{path}: too many levels of symbolic links in the image")


def why_chain(records: list[FileRecord], path: str) -> list[FileRecord]:
    """The record for `path`, then the record of what pulled it in, and so on up to a stage's own choice."""
    by_path = {r.path: r for r in records}
    real = resolve_in_image(by_path, path)
    record = by_path.get(real) or by_path.get(posixpath.normpath("/" + path.lstrip("/")))
    if record is None:
        raise BeobootError(f"{path} is not in this image", hint="list the image with `beoboot-build inspect IMAGE`")
    chain = [record]
    while record.cause and len(chain) < 64:
        parent = _find_cause(by_path, record.cause)
        if parent is None or parent in chain:
            break
        chain.append(parent)
        record = parent
    return chain


def _find_cause(by_path: dict[str, FileRecord], cause: str) -> FileRecord | None:
    if cause.startswith("/"):
        try:
            return by_path.get(resolve_in_image(by_path, cause))
        except BeobootError:
            return None
    # a kernel module name: find its file
    wanted = cause.replace("-", "_")
    for record in by_path.values():
        name = posixpath.basename(record.path)
        for suffix in MODULE_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)].replace("-", "_") == wanted:
                return record
    return None
