"""The site's file systems ([[mounts]] in beoserv's config, sent with the registration reply), mounted
into the environment root before the node takes jobs: NFS from the master or another server, tmpfs, and
local partitions by label.

mount(2) is called directly with the options as text, as mount(8) would pass them, for NFS too: the
kernel's NFS client parses them itself, but it resolves no names and finds no client address, which
mount.nfs adds for it. So this adds them: `addr=` the server's IPv4 address (a name is resolved here,
with the resolv.conf stage3.names wrote), `clientaddr=` this node's for NFSv4 (where the server calls
back), and for v3 `nolock`, as no rpc.statd runs here. Flag words (ro, nosuid, noatime...) become mount
flags, as mount(8) makes them. The modules (nfs, nfsv4, nfsv3, sunrpc...) come with stage 3 (its module
list, beoboot/default.toml).

A mount that fails, or hangs past MOUNT_WAIT (a server that never answers), is reported by its target,
on the console, in the node's log and as a MOUNT_FAILED event (bpstat shows it); the node takes jobs
anyway, without it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from agent import protocol as p
from agent.system import syscalls
from stage3.disklabels import find_label

MOUNT_WAIT = 60.0  # seconds one mount may take before the node goes on without it
NFS_TYPES = ("nfs", "nfs4")
# mount(8)'s flag words, as <sys/mount.h> has them: (set, clear)
MS_RDONLY, MS_SYNCHRONOUS, MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = (
    0x1,
    0x10,
    0x400,
    0x800,
    0x200000,
    0x1000000,
)
FLAG_WORDS = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (syscalls.MS_NOSUID, 0),
    "suid": (0, syscalls.MS_NOSUID),
    "nodev": (syscalls.MS_NODEV, 0),
    "dev": (0, syscalls.MS_NODEV),
    "noexec": (syscalls.MS_NOEXEC, 0),
    "exec": (0, syscalls.MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0),
    "async": (0, MS_SYNCHRONOUS),
    "noatime": (MS_NOATIME, 0),
    "nodiratime": (MS_NODIRATIME, 0),
    "relatime": (MS_RELATIME, 0),
    "strictatime": (MS_STRICTATIME, 0),
    "defaults": (0, 0),
}


class MountError(Exception):
    pass


@dataclass(frozen=True)
class MountCall:
    source: str
    fstype: str
    flags: int
    data: str


def split_options(options: str) -> tuple[int, list[str]]:
    """mount(8)'s option text -> (mount flags, the rest, for the file system)."""
    flags, rest = 0, []
    for word in filter(None, options.split(",")):
        if word in FLAG_WORDS:
            on, off = FLAG_WORDS[word]
            flags = (flags | on) & ~off
        else:
            rest.append(word)
    return flags, rest


def _option(words: list[str], *names: str) -> str | None:
    for word in words:
        key, _, value = word.partition("=")
        if key in names:
            return value
    return None


def ipv4_of(host: str, resolve: Callable[[str], str]) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return resolve(host)
    except OSError as exc:
        raise MountError(f"cannot resolve {host!r}: {exc}") from None


def resolve_ipv4(host: str) -> str:
    return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])


def nfs_call(
    mount: p.NodeMount, *, master_host: str, client_address: str, resolve: Callable[[str], str] = resolve_ipv4
) -> MountCall:
    host, colon, path = mount.source.partition(":")
    if not colon or not path.startswith("/"):
        raise MountError(f"source {mount.source!r} is not HOST:/PATH")
    server = ipv4_of(master_host if host == "master" else host, resolve)
    flags, words = split_options(mount.options)
    version = _option(words, "vers", "nfsvers") or ("4" if mount.type == "nfs4" else "")
    if not version:
        version = "4"  # NFSv4 unless a mount asks for another (the kernel alone would try v3 first)
        words.append("vers=4")
    if _option(words, "addr") is None:
        words.append(f"addr={server}")
    if version.startswith("4"):
        if _option(words, "clientaddr") is None and client_address:
            words.append(f"clientaddr={client_address.split('/')[0]}")
        fstype = "nfs4"
    else:
        if "lock" not in words and "nolock" not in words:
            words.append("nolock")  # NLM locking needs rpc.statd, which the node does not run
        fstype = "nfs"
    return MountCall(f"{server}:{path}", fstype, flags, ",".join(words))


def mount_call(
    mount: p.NodeMount,
    *,
    master_host: str,
    client_address: str,
    resolve: Callable[[str], str] = resolve_ipv4,
    find: Callable[[str], str | None] = find_label,
) -> MountCall:
    """What mount(2) is called with for `mount`; MountError when it cannot be worked out."""
    if mount.type in NFS_TYPES:
        return nfs_call(mount, master_host=master_host, client_address=client_address, resolve=resolve)
    flags, words = split_options(mount.options)
    source = mount.source
    if source.startswith("LABEL="):
        found = find(source[len("LABEL=") :])
        if found is None:
            raise MountError(f"no partition labelled {source[len('LABEL=') :]!r} (is its disk's driver loaded?)")
        source = found
    return MountCall(source or mount.type, mount.type, flags, ",".join(words))


def target_dir(env_root: str, target: str) -> str:
    """The mount point inside the environment root, made if missing; refused when a link leads outside."""
    if not target.startswith("/") or os.path.normpath(target) != target or target == "/":
        raise MountError("the target is not an absolute path inside the environment root")
    path = env_root + target
    os.makedirs(path, mode=0o755, exist_ok=True)
    if os.path.realpath(path) != os.path.realpath(env_root) + target:
        raise MountError(f"{target} passes through a symbolic link in the environment root")
    return path


def _timed_mount(call: MountCall, path: str, wait: float, *, dry_run: bool) -> None:
    """mount(2) on a thread of its own: a hard NFS mount of a server that never answers blocks in the
    kernel, and the node must go on (the thread is a daemon; if the mount comes later, it is there)."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            syscalls.mount(call.source, path, call.fstype, call.flags, call.data, dry_run=dry_run)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, name=f"mount {path}", daemon=True)
    thread.start()
    thread.join(wait)
    if not outcome:
        raise MountError(f"no answer within {wait:g} s")
    if outcome[0] is not None:
        raise MountError(str(outcome[0]))


def mount_all(
    mounts: tuple[p.NodeMount, ...],
    env_root: str,
    *,
    master_host: str,
    client_address: str,
    say: Callable[[str, str], None],
    failed: Callable[[str], None],
    dry_run: bool,
    types: tuple[str, ...] | None = None,
    wait: float = MOUNT_WAIT,
) -> list[str]:
    """Mount each of `mounts` in order; the targets mounted. `types`: only those types are carried out,
    the others said and left (a simulated node mounts tmpfs only)."""
    done = []
    for mount in mounts:
        name = f"{mount.target} ({mount.type} {mount.source})"
        if types is not None and mount.type not in types:
            say(f"beoboot: mount {name}: not carried out here (only: {', '.join(types) or 'none'})", "info")
            continue
        try:
            call = mount_call(mount, master_host=master_host, client_address=client_address)
            _timed_mount(call, target_dir(env_root, mount.target), wait, dry_run=dry_run)
        except (MountError, OSError, ValueError) as exc:  # ValueError: a NUL in a path
            say(f"beoboot: mount {name} failed: {exc}", "error")
            failed(f"{mount.target}: {exc}")
            continue
        say(f"beoboot: mounted {name} at {mount.target} in the environment root", "info")
        done.append(mount.target)
    return done
