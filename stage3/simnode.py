"""A simulated node: stage 3's job path as a plain process on the master host (`python -m stage3.simnode`)."""

# Same code as a booted node from registration on (MasterLink, heartbeats, stage3.jobrunner, stage3.libcache),
# without a kernel of its own: each node's environment root is a directory under --dir, its libcache the
# hidden directory inside it, with the kernel file systems a booted node mounts there but /sys and /tmp.
# One process can run many nodes (--count), each with its own MAC, link and cache, for the benchmarks.
#
# Jobs run chrooted, so this must run as root. When it does, it enters a private mount namespace first and
# mounts /dev (with /dev/shm and /dev/pts) and /proc into each environment root; the namespace goes
# away with the process, so a killed simnode leaves no mounts behind. unshare(CLONE_NEWNS) must come before
# any thread.

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading

from agent import hwprobe
from agent import protocol as p
from agent.masterlink import MasterLink
from agent.schema import Stage
from agent.system.mounts import ENV_ROOT_MOUNTS
from stage3 import jobrunner
from stage3.libcache import LIBCACHE_DIR, LibCache

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
SKELETON_FILES = {
    "etc/passwd": "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
}


def private_mounts() -> bool:
    """Enter a mount namespace of our own, with / private so nothing propagates back. False if not allowed."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        return False
    return libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0


def mount_kernel_filesystems(root: str) -> None:
    """A booted node's (agent.system.mounts.ENV_ROOT_MOUNTS) but /sys, which would show the master's devices, and
    /tmp, which the tests read from outside (a tmpfs of this namespace would hide it from them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for mount in ENV_ROOT_MOUNTS:
        if mount.target not in ("/sys", "/tmp"):
            target = os.path.join(root, mount.target.lstrip("/"))
            os.makedirs(target, exist_ok=True)
            data = mount.data.encode() or None
            libc.mount(mount.source.encode(), target.encode(), mount.fstype.encode(), mount.flags, data)


def make_env_root(root: str, *, proc: bool) -> None:
    """The skeleton a booted node's envroot image gives: /dev, /proc, /sys, /tmp, /etc/passwd, /etc/group;
    with `proc` (a mount namespace of our own), the kernel file systems mounted as on a booted node."""
    for name, mode in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777), ("etc", 0o755)):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        os.chmod(os.path.join(root, name), mode)
    for name, text in SKELETON_FILES.items():
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
    null = os.path.join(root, "dev/null")
    if os.getuid() == 0 and not os.path.exists(null):
        os.mknod(null, 0o666 | 0o020000, os.makedev(1, 3))
        os.chmod(null, 0o666)
    if proc:
        mount_kernel_filesystems(root)


def simulated_mac(index: int, prefix: str = "02:be:0b") -> str:
    """Locally administered MACs (bit 1 of the first octet), so they can never clash with real NICs."""
    return f"{prefix}:{(index >> 16) & 0xFF:02x}:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}"


class SimNode:
    def __init__(self, master: str, directory: str, index: int, *, max_bytes: int, proc: bool) -> None:
        self.master, self.mac = master, simulated_mac(index)
        self.env_root = os.path.join(directory, f"node{index}", "env")
        os.makedirs(self.env_root, exist_ok=True)
        make_env_root(self.env_root, proc=proc)
        # durable=False: a booted node's cache is in RAM by default, where fsync is a no-op; this scratch
        # directory on the host's disk stands for it and must not pay for a disk's fsync per object
        self.cache = LibCache(
            os.path.join(self.env_root, LIBCACHE_DIR),
            self.env_root,
            master,
            max_bytes=max_bytes,
            durable=False,
            token=self._token,
        )

    def _token(self) -> str:
        return self.link.registration.link_token if self.link.registration else ""

    def start(self) -> int:
        """Boot: register (a new boot of the same node number), report stage 3 ready, heartbeat, link."""
        self.link = MasterLink(self.master, self.mac, Stage.SUPERVISOR, timeout=10)
        self.runner = jobrunner.JobRunner(
            self.master, self.mac, self.env_root, self.cache, log=print, token=self._token, power=self.power
        )
        reply = self.link.register(p.Hardware(cpu_model="simulated", cpus=1), attempts=20)
        self.link.event(p.BootEvent.STAGE3_READY)
        self.heartbeats = self.link.run_heartbeats(load=hwprobe.load)  # the host's: the nodes share it
        self.runner.start()
        return reply.number

    def stop(self) -> None:
        self.runner.stop()
        self.link.stop()

    def power(self, order: p.NodePower) -> None:
        """bpctl's order, as a booted node carries it out (stage3.supervisor.act_on) minus the kernel: the
        heartbeats stop, the link closes; a reboot then boots again, with the libcache kept as a local
        disk's would be."""
        self.link.stop()
        self.heartbeats.join()  # no heartbeat may reach the master after the link closed: it would be "up"
        self.runner.stop()
        print(f"simnode: {self.mac}: {order.action}, as {order.by or 'the master'} asked", flush=True)
        if order.action is p.PowerAction.REBOOT:
            print(f"simnode: {self.mac}: node {self.start()} up again", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stage3.simnode", description=__doc__.split("\n")[0])
    parser.add_argument("--master", required=True, help="beoserv URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--dir", required=True, help="scratch directory for the nodes' environment roots")
    parser.add_argument("--count", type=int, default=1, help="how many nodes this process simulates")
    parser.add_argument("--first", type=int, default=0, help="index of the first node's MAC")
    parser.add_argument("--libcache-max-bytes", type=int, default=512 << 20)
    args = parser.parse_args(argv)
    proc = os.getuid() == 0 and private_mounts()
    nodes = [
        SimNode(args.master, os.path.abspath(args.dir), args.first + i, max_bytes=args.libcache_max_bytes, proc=proc)
        for i in range(args.count)
    ]
    numbers = [node.start() for node in nodes]
    for node in nodes:
        node.runner.connected.wait(30)
    print(f"simnode: {len(nodes)} nodes up: {','.join(map(str, numbers))}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    for node in nodes:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
