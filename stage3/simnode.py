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
import gc
import json
import os
import selectors
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from agent import bootfiles, hwprobe
from agent import protocol as p
from agent.config import MASTER_LOST
from agent.masterlink import MasterLink
from agent.schema import Stage
from agent.system import syscalls
from agent.system.mounts import ENV_ROOT_MOUNTS
from stage3 import jobrunner, sitemounts
from stage3.libcache import LIBCACHE_DIR, LibCache
from stage3.names import NodeNames, resolv_conf
from stage3.simfleet import (
    DOWNLOADS_PER_PROCESS,
    NODES_PER_PROCESS,
    HeartbeatScheduler,
    NodeFigures,
    every_second,
    figures_json,
    fork_workers,
    processes_for,
    send_report,
    split,
)

# what a node downloads between PXE and its first job: stage 2 fetches stage 3, and stage 3 the envroot
BOOT_FILES = (Stage.SUPERVISOR, Stage.ENVROOT)
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
SKELETON_FILES = {
    "etc/passwd": "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",  # the envroot image's (templates/envroot)
}
# Every simulated node runs on this host, so its own names, the master's and (from the host table) the
# other nodes' resolve to loopback, where the others' jobs listen too: MPI daemons and ranks reach each
# other by the names their launchers give them (n0, n1, the master's host name). Each node has an address
# of its own in 127.0.0.0/8 (simulated_address), not 127.0.0.1: a launcher on the master that resolves
# the node's name would take 127.0.0.1 for itself and start the node's work here, not through bpsh
# Nodes of a fleet up to this size take the host table as stage 3 does (at once when up, then whenever a
# heartbeat says it changed); a bigger fleet's would be a load of the simulator's own (a thousand nodes
# fetching a thousand lines at each change), not the master's that its benchmarks measure, and its
# nodes know their own and the master's names only
FOLLOW_HOSTS_UP_TO = 64
SIMULATED_MOUNT_TYPES = ("tmpfs",)  # what a simulated node mounts of [[mounts]]: the others need its own kernel


def private_mounts() -> bool:
    """Enter a mount namespace of our own, with / private so nothing propagates back. False if not allowed."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        return False
    return libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0


def mount_in_ram(directory: str) -> None:
    """A tmpfs over `directory`, in this process's mount namespace: the nodes' files in RAM, as a booted node
    holds its environment root. On the host's disk a thousand nodes' downloads, written and deleted, measure
    the disk's file system (ext4 searching its inode tables past recently deleted inodes for each new file
    took a sixth of a cold fan-out's CPU), not the master. OSError if it cannot be mounted."""
    os.makedirs(directory, exist_ok=True)
    syscalls.mount("tmpfs", directory, "tmpfs", data="mode=0755", dry_run=False)


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


def simulated_address(index: int) -> str:
    """Node `index`'s loopback address: 127.1.0.1 for the first, then on (127.1.1.0 is the 256th)."""
    number = index + 1
    return f"127.{1 + ((number >> 16) & 0x7F)}.{(number >> 8) & 0xFF}.{number & 0xFF}"


def simulated_mac(index: int, prefix: str = "02:be:0b") -> str:
    """Locally administered MACs (bit 1 of the first octet), so they can never clash with real NICs."""
    return f"{prefix}:{(index >> 16) & 0xFF:02x}:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}"


class SimNode:
    def __init__(
        self,
        master: str,
        directory: str,
        index: int,
        *,
        max_bytes: int,
        proc: bool,
        heartbeats: HeartbeatScheduler | None = None,
        download_slots: threading.Semaphore | None = None,
        load: Callable[[], p.Load | None] = hwprobe.load,
    ) -> None:
        self.master, self.mac, self.address = master, simulated_mac(index), simulated_address(index)
        self.figures = NodeFigures(self.mac)
        self.directory = os.path.join(directory, f"node{index}")
        self.env_root = os.path.join(self.directory, "env")
        os.makedirs(self.env_root, exist_ok=True)
        make_env_root(self.env_root, proc=proc)
        self.scheduler, self.load = heartbeats, load
        self.private_mounts = proc  # root, in a mount namespace of its own: it may mount in its root
        self.booted: dict[str, str] = {}  # image -> sha256, of the images boot() fetched (with --boot)
        self._boot_id = str(uuid.uuid4())  # the kernel's, as boot() (stage 2) and start() (stage 3) send it
        self.follow_hosts = False  # take the host table's changes (FOLLOW_HOSTS_UP_TO)
        self._kept = False  # said that the master is lost and the node keeps on
        self._booting_again = False  # master_lost rebooted it: not lost again until it is up
        self._beat_lock = threading.Lock()  # held across a scheduled heartbeat: power() waits for one under way
        # durable=False: a booted node's cache is in RAM by default, where fsync is a no-op; this scratch
        # directory on the host's disk stands for it and must not pay for a disk's fsync per object
        self.cache = LibCache(
            os.path.join(self.env_root, LIBCACHE_DIR),
            self.env_root,
            master,
            max_bytes=max_bytes,
            durable=False,
            token=self._token,
            download_slots=download_slots,
            connections=1,  # its downloads wait for the process's shared slots: one kept-alive connection
        )

    def _token(self) -> str:
        link = getattr(self, "link", None)  # none before start(), as for --fetch-only
        return link.registration.link_token if link is not None and link.registration else ""

    def fetch(self, files: tuple[p.JobFile, ...], since: float) -> None:
        """A cold job's downloads alone (--fetch-only): its objects into this node's libcache, as the job
        path fetches them (LibCache.ensure), from any web server that lays them out as beoserv does."""
        started = time.monotonic() - since
        self.cache.batches = False  # one GET per object, the best a plain web server answers
        self.cache.ensure(files)
        self.figures.fetch = [started, time.monotonic() - since]

    def boot(self, manifest: dict, pins: dict[str, str], since: float, register: bool) -> None:
        """Stage 2's part on the wire, as a booted stage 2 does it: register (`register`: not with a plain web
        server), then download stage 3 and the environment root naming itself (pinned, resumed, retried with
        backoff). The files are checked, then dropped (nothing unpacks them)."""
        mac = None
        if register:
            link = MasterLink(self.master, self.mac, Stage.PXE, timeout=10)
            link.address, link.boot_id = self.address, self._boot_id
            link.register(p.Hardware(cpu_model="simulated", cpus=1), attempts=20)
            link.http.close()  # stage 2's link ends with its ramdisk
            mac = self.mac
        boot_dir = os.path.join(self.directory, "boot")
        os.makedirs(boot_dir, exist_ok=True)
        for stage in BOOT_FILES:
            dest = os.path.join(boot_dir, stage.value)
            bootfiles.fetch(self.master.rstrip("/") + "/", manifest, stage.value, dest, pins, lambda _: None, mac)
            os.unlink(dest)
            self.booted[stage.value] = bootfiles.expected(manifest, stage.value, pins)
        self.figures.booted = time.monotonic() - since

    def start(self, since: float | None = None) -> int:
        """Boot: register (a new boot of the same node number), report stage 3 ready, heartbeat, link."""
        self.link = MasterLink(self.master, self.mac, Stage.SUPERVISOR, timeout=10)
        self.link.booted = p.Booted(self.link.booted.kernel, dict(self.booted))
        self.runner = jobrunner.JobRunner(
            self.master, self.mac, self.env_root, self.cache, log=print, token=self._token, power=self.power
        )
        self.link.address = self.address  # for the cluster's host table
        self.link.boot_id = self._boot_id
        self._boot_id = str(uuid.uuid4())  # the next start is another boot
        reply = self.link.register(p.Hardware(cpu_model="simulated", cpus=1), attempts=20)
        self.names = NodeNames(reply, self.address, self.master, self.env_root, dry_run=True, root=self.directory)
        self.names.resolv = resolv_conf(reply)
        self.names.write_env_root()
        self.mount_site(reply)
        self.hosts_version = 0
        self.link.event(p.BootEvent.STAGE3_READY)
        if self.scheduler is None:
            self.heartbeats: threading.Thread | None = self.link.run_heartbeats(load=self.load)
        else:
            self.heartbeats = None
            self.scheduler.add(self.beat)
        self.runner.start()
        self.figures.number = reply.number
        if since is not None:
            self.figures.up = time.monotonic() - since
        return reply.number

    def mount_site(self, reply: p.RegisterReply) -> None:
        """The site's [[mounts]] as a booted node mounts them, but tmpfs only (in its own mount namespace,
        as root); the others are said and left. Failures are reported as a booted node reports them."""
        sitemounts.mount_all(
            reply.mounts,
            self.env_root,
            master_host=urlsplit(self.master).hostname or "",
            client_address=self.address,
            say=lambda message, level: print(f"simnode: {self.mac}: {message}", flush=True),
            failed=lambda detail: self.link.event(p.MOUNT_FAILED, detail),
            dry_run=False,
            types=SIMULATED_MOUNT_TYPES if self.private_mounts else (),
            wait=5.0,
        )

    def beat(self) -> float | None:
        """One scheduled heartbeat; None once the link is stopped. A new host table is taken at once."""
        with self._beat_lock:
            if self.link.stopped:
                return None
            interval = self.link.beat(None, self.load())
        if self.follow_hosts and self.link.hosts_version != self.hosts_version:
            self.take_hosts()
        return interval

    def take_hosts(self) -> None:
        """The cluster's host table into the environment root's /etc/hosts, as stage 3 takes it."""
        version = self.link.hosts_version
        table = self.link.hosts()
        if table is not None:
            self.names.take_table(table)
            self.hosts_version = version

    def _stop_heartbeats(self) -> None:
        self.link.stop()
        if self.heartbeats is not None:
            self.heartbeats.join()
        with self._beat_lock:
            pass  # a scheduled heartbeat under way has ended; no other will start

    def stop(self) -> None:
        self.runner.stop()
        self.link.stop()

    def master_lost(self, timeout: float, lost: str) -> None:
        """A booted node's master_lost, checked now and then: "keep" runs on and says so; "reboot" and
        "halt" end the jobs (the kernel would) and say so, and a reboot boots again once the master
        answers (registers, which it retries meanwhile)."""
        silent = time.monotonic() - self.link.last_answer
        if self._booting_again or self.link.stopped or silent <= timeout:
            self._kept = False
            return
        if lost == "keep":
            if not self._kept:
                print(f"simnode: {self.mac}: master lost for {timeout:g} s: keep (jobs run on)", flush=True)
                self._kept = True
            return
        print(f"simnode: {self.mac}: master lost for {timeout:g} s: {lost}", flush=True)
        self._stop_heartbeats()
        self.runner.forget_all()
        self.runner.end_jobs(0.0)
        self.runner.stop()
        if lost == "reboot":
            self._booting_again = True
            threading.Thread(target=self._boot_again, daemon=True).start()

    def _boot_again(self) -> None:
        while True:
            try:
                print(f"simnode: {self.mac}: node {self.start()} up again", flush=True)
                break
            except Exception as exc:  # the master is still away: a real node's stage 1 would retry too
                print(f"simnode: {self.mac}: booting again: {exc}", flush=True)
                time.sleep(1.0)
        self._booting_again = False

    def power(self, order: p.NodePower) -> None:
        """bpctl's order, as a booted node carries it out (stage3.supervisor.act_on) minus the kernel: the
        heartbeats stop, the link closes; a reboot then boots again, with the libcache kept as a local
        disk's would be."""
        self._stop_heartbeats()  # no heartbeat may reach the master after the link closed: it would be "up"
        self.runner.stop()
        print(f"simnode: {self.mac}: {order.action}, as {order.by or 'the master'} asked", flush=True)
        if order.action is p.PowerAction.REBOOT:
            print(f"simnode: {self.mac}: node {self.start()} up again", flush=True)


def run_worker(args: argparse.Namespace, first: int, count: int, report: int, proc: bool) -> int:
    """One worker process's nodes: boot (with --boot), start, report, run until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scheduler = HeartbeatScheduler() if count > 1 else None
    slots = threading.Semaphore(DOWNLOADS_PER_PROCESS)
    load = every_second(hwprobe.load)
    nodes = [
        SimNode(
            args.master,
            os.path.abspath(args.dir),
            index,
            max_bytes=args.libcache_max_bytes,
            proc=proc,
            heartbeats=scheduler,
            download_slots=slots,
            load=load,
        )
        for index in range(first, first + count)
    ]
    since = args.since
    if args.boot or args.boot_only:
        manifest, pins = _published(args.master)
        _each(nodes, lambda node: node.boot(manifest, pins, since, register=args.boot), threads=len(nodes))
    if args.fetch_only:
        files = args.fetch_only
        _each(nodes, lambda node: node.fetch(files, since), threads=len(nodes))
    if args.boot_only or args.fetch_only:  # the downloads alone: against any web server (the benchmarks' nginx)
        send_report(report, "up", figures_json([node.figures for node in nodes]))
        times = os.times()
        send_report(report, "done", {"cpu_seconds": times.user + times.system})
        return 0
    # a few at a time: registrations in index order for small fleets (node N gets number N on a fresh master)
    _each(nodes, lambda node: node.start(since), threads=1 if count <= 16 else 8)
    for node in nodes:
        node.runner.connected.wait(30)
    for node in nodes if args.count <= FOLLOW_HOSTS_UP_TO else ():
        node.follow_hosts = True
        node.take_hosts()  # so that a small cluster's nodes name each other as soon as it is up
    send_report(report, "up", figures_json([node.figures for node in nodes]))
    # what the nodes hold from now on lives as long as they do: out of the collector's way, whose full
    # passes over every node's objects took a twentieth of a cold fan-out's CPU
    gc.freeze()
    while not stop.wait(min(1.0, args.master_timeout / 4)):
        for node in nodes:
            node.master_lost(args.master_timeout, args.master_lost)
    for node in nodes:
        node.stop()
    if scheduler is not None:
        scheduler.stop()
    times = os.times()
    send_report(report, "done", {"cpu_seconds": times.user + times.system})
    return 0


def _each(nodes: list[SimNode], work: Callable[[SimNode], object], threads: int) -> None:
    """work(node) for every node, `threads` at a time; a failure is the node's figure, not the fleet's end."""
    todo = list(reversed(nodes))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                node = todo.pop()
            try:
                work(node)
            except Exception as exc:  # one node's failure is a figure of the run
                node.figures.error = f"{type(exc).__name__}: {exc}"
                print(f"simnode: {node.mac}: {node.figures.error}", flush=True)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(threads, len(nodes))))]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def _published(master: str) -> tuple[dict, dict[str, str]]:
    """The master's manifest, and the pins a node's command line would carry (from the same manifest)."""
    with tempfile.TemporaryDirectory() as scratch:
        manifest = bootfiles.fetch_manifest(master.rstrip("/") + "/", os.path.join(scratch, "m.json"), print)
    pins = {stage.value: bootfiles.listed(manifest, stage.value)[1] for stage in BOOT_FILES}
    return manifest, pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stage3.simnode", description=__doc__.split("\n")[0])
    parser.add_argument("--master", required=True, help="beoserv URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--dir", required=True, help="scratch directory for the nodes' environment roots")
    parser.add_argument("--count", type=int, default=1, help="how many nodes to simulate")
    parser.add_argument("--first", type=int, default=0, help="index of the first node's MAC")
    parser.add_argument("--libcache-max-bytes", type=int, default=512 << 20)
    parser.add_argument(
        "--master-timeout", type=_seconds, default=30.0, help="seconds without the master before master_lost"
    )
    parser.add_argument(
        "--master-lost", choices=MASTER_LOST, default="reboot", help="then: reboot, halt, or keep the jobs running"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help=f"worker processes (default: one for <= 16 nodes, else one per core or per {NODES_PER_PROCESS} nodes)",
    )
    parser.add_argument("--boot", action="store_true", help="first download stage 3 and the envroot, as stage 2")
    parser.add_argument("--boot-only", action="store_true", help="only the downloads of --boot, then exit")
    parser.add_argument(
        "--fetch-only",
        type=_job_files,
        metavar="FILES.json",
        help="only download these libcache objects (a JSON list of JobFile fields), as a cold job does, then exit",
    )
    parser.add_argument("--report", help="write per-node times and the simulator's CPU seconds here (JSON)")
    parser.add_argument(
        "--in-ram",
        action="store_true",
        help="keep the nodes' files in RAM (a tmpfs over --dir, seen by the simulator only), as booted nodes do",
    )
    args = parser.parse_args(argv)
    args.since = time.monotonic()
    if args.count < 1:
        parser.error("--count must be at least 1")
    processes = args.processes or processes_for(args.count, os.cpu_count() or 1)
    proc = os.getuid() == 0 and private_mounts()  # before the fork: the workers share the namespace
    if args.in_ram:
        if not proc:
            parser.error(f"--in-ram: cannot mount a tmpfs on {args.dir}: it needs root (a mount namespace of its own)")
        try:
            mount_in_ram(os.path.abspath(args.dir))
        except OSError as exc:
            parser.error(f"--in-ram: cannot mount a tmpfs on {args.dir}: {exc.strerror}")
    workers = fork_workers(
        split(args.count, args.first, processes),
        lambda first, count, report: run_worker(args, first, count, report, proc),
    )

    def forward(signum: int, _frame: object) -> None:
        for pid, _ in workers:
            _kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    figures, cpu = collect(workers)
    if args.report:
        with open(args.report + ".tmp", "w") as f:
            json.dump({"nodes": figures, "cpu_seconds": cpu, "processes": len(workers)}, f)
        os.replace(args.report + ".tmp", args.report)
    return 0 if all(not f["error"] for f in figures) else 1


def collect(workers: list[tuple[int, int]]) -> tuple[list[dict], float]:
    """Read the workers' reports until they exit: print when every node is up; (figures, CPU seconds)."""
    figures: list[dict] = []
    cpu = 0.0
    up = 0
    readers = {fd: os.fdopen(fd) for _, fd in workers}
    with selectors.DefaultSelector() as selector:
        for fd, reader in readers.items():
            selector.register(fd, selectors.EVENT_READ, reader)
        while selector.get_map():
            for key, _ in selector.select():
                line = key.data.readline()
                if not line:
                    selector.unregister(key.fd)
                    continue
                message = json.loads(line)
                if message["kind"] == "up":
                    figures += message["body"]
                    up += 1
                    if up == len(workers):
                        numbers = ",".join(str(f["number"]) for f in sorted(figures, key=lambda f: f["mac"]))
                        print(f"simnode: {len(figures)} nodes up: {numbers}", flush=True)
                elif message["kind"] == "done":
                    cpu += message["body"]["cpu_seconds"]
    for pid, _ in workers:
        os.waitpid(pid, 0)
    return figures, cpu


def _job_files(path: str) -> tuple[p.JobFile, ...]:
    """--fetch-only's list: [{"path", "mode", "sha256", "size", ...}, ...], as JobFile has them."""
    try:
        with open(path) as f:
            return tuple(p.JobFile(**entry) for entry in json.load(f))
    except (OSError, ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{path}: not a JSON list of JobFile fields: {exc}") from None


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0.1 <= seconds <= 86400:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds from 0.1 to 86400")
    return seconds


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main())
