"""Atomic outputs: a build becomes visible all at once."""

# Each build is written into its own directory, `OUTDIR/.builds/unfinished-PID/`, renamed to
# `OUTDIR/.builds/ID/` when complete (ID: the start of its manifest's sha256, so identical builds get the
# same name) and published by one atomic rename: a new symlink `OUTDIR/current -> .builds/ID` over the old
# one. The names users and servers know (`OUTDIR/manifest.json`, `OUTDIR/beoboot.iso`, `OUTDIR/pxe/...`)
# are symlinks through `current` (`manifest.json -> current/manifest.json`), so at every instant they show
# one whole build: its manifest and its artifacts agree, even when the build is killed midway.
#
# After publishing, builds other than the new and the previous one (`.builds/previous`) are removed (the
# previous one stays so downloads that resolved it just before the switch still find it; a file already
# open survives anyway), and so are the unfinished directories of builds that are no longer running.

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from beoboot.errors import OutputError

BUILDS_DIR = ".builds"
CURRENT = "current"
PREVIOUS = "previous"  # .builds/previous: the build published before the current one, kept
UNFINISHED_PREFIX = "unfinished-"
# an older beoboot staged in OUTDIR itself; its leftovers are cleaned up too
OLD_STAGING_PREFIX = ".beoboot-staging-"


class Staging:
    """`with Staging(outdir) as staging:` write into `staging.path`, then `staging.publish(manifest_name)`.
    Leaving the block without publishing (an error, Ctrl-C, SIGTERM) removes the unfinished build."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.builds = outdir / BUILDS_DIR
        self.builds.mkdir(parents=True, exist_ok=True)
        remove_stale_unfinished(outdir)
        self.path = self.builds / f"{UNFINISHED_PREFIX}{os.getpid()}"
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def publish(self, manifest_name: str) -> Path:
        """Make the staged build the published one; returns its directory."""
        build_id = hashlib.sha256((self.path / manifest_name).read_bytes()).hexdigest()[:16]
        final = self.builds / build_id
        with _publish_lock(self.builds):
            artifacts = _flat_artifacts(self.outdir / manifest_name)
            flat = {Path(a).parts[0] for a in artifacts}
            _refuse_foreign_files(self.outdir, {*os.listdir(self.path), *flat}, artifacts)
            if final.is_dir():  # the same bytes were built before and are complete: use them
                shutil.rmtree(self.path)
            else:
                os.rename(self.path, final)
            replaced = _link_target(self.outdir / CURRENT)
            if replaced and replaced != build_id:  # remembered, so a build that publishes nothing new keeps it
                _replace_with_symlink(self.builds / PREVIOUS, replaced, self.builds)
            names = sorted(os.listdir(final))
            _link_names(self.outdir, [n for n in names if n != manifest_name], manifest_name)
            _replace_with_symlink(self.outdir / CURRENT, f"{BUILDS_DIR}/{build_id}", self.builds)
            _unlink_stale_names(self.outdir, set(names), flat)
            _remove_old_builds(self.builds, keep={build_id, _link_target(self.builds / PREVIOUS)})
        return final


def _link_names(outdir: Path, names: list[str], manifest_name: str) -> None:
    """Give each top-level name of the build its fixed link through `current`, the manifest last. Links
    that exist are untouched; new ones dangle until `current` is switched, which is harmless since no
    published manifest lists them. A file or directory in the way (an output directory of a beoboot
    before this layout, or a copy made without keeping symlinks) was a whole older build: its manifest
    goes first, so until the switch nothing is published rather than a mix."""
    manifest = outdir / manifest_name
    if manifest.exists() and not manifest.is_symlink():
        manifest.unlink()
    for name in [*names, manifest_name]:
        _replace_with_symlink(outdir / name, f"{CURRENT}/{name}", outdir / BUILDS_DIR)


def _replace_with_symlink(path: Path, target: str, builds: Path) -> None:
    """`path` becomes a symlink to `target` in one rename (a real directory in the way is moved aside first);
    the link is made in `builds` (.builds), where a killed build's leftovers are found and removed."""
    if path.is_symlink() and os.readlink(path) == target:
        return
    if path.is_dir() and not path.is_symlink():
        os.rename(path, builds / f"{UNFINISHED_PREFIX}{os.getpid()}-old-{path.name}")
    temporary = builds / f"{UNFINISHED_PREFIX}{os.getpid()}-link"
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.rename(temporary, path)


def _flat_artifacts(manifest: Path) -> set[str]:
    """The artifact paths a manifest that is a plain file (an older layout, or a copy) lists: real files of
    that build, ours to remove once a new build no longer has them."""
    if manifest.is_symlink() or not manifest.is_file():
        return set()
    try:
        paths = {os.path.normpath(a["path"]) for a in json.loads(manifest.read_text())["artifacts"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {path for path in paths if not path.startswith(("/", "..")) and path != "."}


def _refuse_foreign_files(outdir: Path, names: set[str], artifacts: set[str]) -> None:
    """A real directory of OUTDIR that publishing replaces or removes whole (`pxe/` of an older layout) may
    hold only the artifacts its manifest listed: an administrator's own file there (a per-MAC
    pxelinux.cfg) stops the build rather than go with it."""
    foreign = []
    for name in sorted(names):
        top = outdir / name
        if top.is_symlink() or not top.is_dir():
            continue
        for directory, _, files in os.walk(top):
            for file in files:
                relative = os.path.relpath(os.path.join(directory, file), outdir)
                if relative not in artifacts:
                    foreign.append(relative)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(
            f"{outdir}: publishing this build would remove files no build of beoboot made there: {shown}",
            hint="move them out of the output directory (its pxe/, server/ and images are the build's alone)",
        )


def _unlink_stale_names(outdir: Path, names: set[str], flat: set[str]) -> None:
    """Remove what the published build no longer has (stage1.cpio.xz after a switch to gzip): our links,
    and the plain files of a flat build that were listed in its manifest."""
    for entry in os.scandir(outdir):
        if entry.name in names or entry.name in (CURRENT, BUILDS_DIR):
            continue
        if entry.is_symlink() and os.readlink(entry.path) == f"{CURRENT}/{entry.name}":
            os.unlink(entry.path)
        elif entry.name in flat and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        elif entry.name in flat and not entry.is_symlink():
            os.unlink(entry.path)


def _link_target(link: Path) -> str | None:
    """The ID of the build `current` or `.builds/previous` names, or None."""
    try:
        return Path(os.readlink(link)).name
    except OSError:
        return None


def _remove_old_builds(builds: Path, keep: set[str | None]) -> None:
    """A build's directory is renamed out of its ID before it is emptied: a directory named by an ID is
    always whole, so a later identical build may reuse it even after a removal was interrupted."""
    for entry in os.scandir(builds):
        ours = entry.name.startswith(UNFINISHED_PREFIX) or (entry.name == PREVIOUS and entry.is_symlink())
        if entry.name not in keep and not ours:
            os.rename(entry.path, builds / f"{UNFINISHED_PREFIX}{os.getpid()}-old-{entry.name}")
    remove_stale_unfinished(builds.parent)


def remove_stale_unfinished(outdir: Path) -> None:
    """Remove what builds that are no longer running left unfinished."""
    leftovers = [(p, p.name[len(UNFINISHED_PREFIX) :]) for p in (outdir / BUILDS_DIR).glob(f"{UNFINISHED_PREFIX}*")]
    leftovers += [(p, p.name[len(OLD_STAGING_PREFIX) :]) for p in outdir.glob(f"{OLD_STAGING_PREFIX}*")]
    for leftover, suffix in leftovers:
        pid = suffix.partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another build is running in this directory right now
        if leftover.is_symlink() or not leftover.is_dir():
            leftover.unlink(missing_ok=True)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


class _publish_lock:
    """Two builds publishing into one OUTDIR at once take turns (the lock goes with the process if it dies)."""

    def __init__(self, builds: Path) -> None:
        self.builds = builds

    def __enter__(self) -> None:
        self.fd = os.open(self.builds, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
