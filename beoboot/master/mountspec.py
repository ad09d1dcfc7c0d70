"""[[mounts]] in beoserv's config: the file systems every node mounts into its environment root before it
takes jobs. The table of the keys of one mount, and the checks that make a wrong one an error naming it
when beoserv reads its config, not a node that fails to mount at boot."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from agent import protocol as p
from beoboot.configfile import Refused, setting

NETWORK_TYPES = ("nfs", "nfs4")
MEMORY_TYPES = ("tmpfs",)
# local disk partitions, found by their label (stage3.disklabels reads ext2/3/4 and XFS labels)
LOCAL_TYPES = ("ext2", "ext3", "ext4", "xfs")
TYPES = NETWORK_TYPES + MEMORY_TYPES + LOCAL_TYPES
# the environment root's own mounts (agent.system.mounts.ENV_ROOT_MOUNTS) and what lies under them
RESERVED_TARGETS = ("/dev", "/proc", "/sys", "/tmp")
MAX_MOUNTS = 64
MAX_OPTIONS = 1024
HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")  # a host name or an IPv4 address
OPTIONS = re.compile(r"[A-Za-z0-9_.,=:/+@-]*")  # mount(8)'s words: no spaces, quotes or control characters
LABEL = re.compile(r"LABEL=[A-Za-z0-9_.+-]{1,16}")  # ext4 labels hold 16 bytes, XFS ones 12


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Refused(f"must be a string ({what})")
    return value


def _type(value: Any) -> str:
    if _text(value, "the file system type") not in TYPES:
        raise Refused("must be one of " + ", ".join(TYPES), hint='"nfs" for the master\'s /home, "tmpfs" for scratch')
    return value


def _target(value: Any) -> str:
    text = _text(value, "an absolute path inside the environment root")
    if not text.startswith("/") or posixpath.normpath(text) != text or text == "/" or not text.isprintable():
        raise Refused("must be an absolute path, written plainly (no '..', '//' or trailing '/'), not '/'")
    if any(text == reserved or text.startswith(reserved + "/") for reserved in RESERVED_TARGETS):
        raise Refused(f"is under {', '.join(RESERVED_TARGETS)}, which the node mounts itself")
    return text


def _options(value: Any) -> str:
    text = _text(value, "mount options")
    if len(text) > MAX_OPTIONS or not OPTIONS.fullmatch(text):
        raise Refused(f"must be mount options, comma-separated words without spaces, at most {MAX_OPTIONS}")
    return text


@dataclass(frozen=True)
class MountConfig:
    type: str = setting(_type, "nfs (v4; vers=3 for v3), tmpfs, or a local file system (ext4, xfs) by LABEL=")
    target: str = setting(_target, "where jobs see it, inside the environment root, e.g. /home")
    source: str = setting(
        lambda value: _text(value, "what to mount"),
        '"master:/home" ("master": the master as the node reaches it), "LABEL=scratch", "tmpfs"',
        "",
    )
    options: str = setting(_options, 'mount options: "vers=4.2", "size=2g", "ro,noatime"', "")

    def for_node(self) -> p.NodeMount:
        return p.NodeMount(self.type, self.source or self.type, self.target, self.options)


def check_source(mount: MountConfig) -> str | None:
    """What is wrong with the mount's source for its type, or None."""
    if mount.type in NETWORK_TYPES:
        host, colon, path = mount.source.partition(":")
        if not (colon and HOST.fullmatch(host) and path.startswith("/") and path.isprintable()):
            return 'an NFS source is HOST:/PATH, e.g. "master:/home" or "10.0.0.5:/export/scratch"'
    elif mount.type in LOCAL_TYPES:
        if not (LABEL.fullmatch(mount.source) or re.fullmatch(r"/dev/[A-Za-z0-9_/-]+", mount.source)):
            return 'a local partition is named "LABEL=NAME" (its file system label) or "/dev/NAME"'
    elif mount.source and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", mount.source):
        return 'a tmpfs source is a word shown in /proc/mounts, e.g. "tmpfs", or left out'
    return None


def mounts_problem(mounts: tuple[MountConfig, ...]) -> str | None:
    """What is wrong with the list as a whole, or with one mount's source, or None."""
    if len(mounts) > MAX_MOUNTS:
        return f"{len(mounts)} mounts, more than {MAX_MOUNTS}"
    seen: set[str] = set()
    for index, mount in enumerate(mounts):
        if (why := check_source(mount)) is not None:
            return f"mounts[{index}].source = {mount.source[:80]!r}: {why}"
        if mount.target in seen:
            return f"mounts[{index}].target = {mount.target!r} is mounted twice"
        seen.add(mount.target)
    return None


def toml_tables(mounts: tuple[MountConfig, ...]) -> list[dict[str, str]]:
    return [{"type": m.type, "source": m.source, "target": m.target, "options": m.options} for m in mounts]
