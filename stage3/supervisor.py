"""Stage 3, the supervisor: the real root while the node runs (applications never see it).

It registers with the master, takes its node number and name, builds the environment root that jobs see,
heartbeats, reaps orphans as PID 1, and reboots the node when the master has been gone for too long.
It listens on no port: every connection is one it opens to the master.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from agent import bootfiles, clocksync, cmdline, cpio, hwprobe, kmsg
from agent import protocol as p
from agent.config import MKE2FS_FSTYPES, MKE2FS_PATH, AgentConfig
from agent.handoff import HANDOFF_PATH, Handoff
from agent.masterlink import MasterLink
from agent.net.netlink import Netlink
from agent.report import reporter, say
from agent.schema import Stage
from agent.system import mounts, syscalls
from stage3 import drivers, jobrunner, leasekeeper, sitemounts
from stage3.libcache import LIBCACHE_DIR
from stage3.names import NodeNames, resolv_conf

ENV_ROOT = "/env"
DISK_WAIT = 10.0  # seconds for the libcache disk's device node to appear
DISK_MOUNT = "/run/beoboot/disk"  # the libcache disk itself
DISK_ENV_DIR = "beoboot-env"  # on the disk: the environment root; anything else on the disk is left alone
MEMORY_REPORT = "/run/beoboot/stage2-memory.json"
TCP_LISTEN = "0A"  # st column of /proc/net/tcp: TCP_LISTEN


class SupervisorError(Exception):
    pass


def listening_sockets(proc: str = "/proc") -> list[str]:
    """Local addresses of TCP sockets in LISTEN state (IPv4 and IPv6), from /proc/net/tcp*."""
    found = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        found += [row.split()[1] for row in rows if len(row.split()) > 3 and row.split()[3] == TCP_LISTEN]
    return found


def reap_children(signum: int = 0, frame: object = None) -> None:
    """PID 1 inherits every orphan: collect their exit statuses so no zombie stays."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def read_handoff(path: str = HANDOFF_PATH) -> Handoff:
    try:
        with open(path) as f:
            return Handoff.from_json(f.read())
    except OSError:
        raise SupervisorError(f"{path} is missing: stage 3 is started by stage 2, which writes it") from None


def take_permanent_address(reply: p.RegisterReply, handoff: Handoff, *, dry_run: bool) -> None:
    """BeoNSS: node N's permanent address is the master's first node address + N. The DHCP address was
    the temporary one every booting node gets; the permanent one is added beside it, same prefix."""
    temporary, _, prefix = handoff.address.partition("/")
    if not reply.address or reply.address == temporary:
        return
    if not dry_run:
        with Netlink() as nl:
            nl.add_address(handoff.interface, reply.address, int(prefix or 24))
    say(f"beoboot: permanent address {reply.address}/{prefix} on {handoff.interface} (node {reply.number})")


def build_env_root(master: str, mac: str, pins: dict[str, str], config: AgentConfig, *, dry_run: bool) -> bool:
    """The environment root: the envroot image unpacked into its own tmpfs, or onto the local disk of
    config.libcache_disk, with agent.system.mounts.ENV_ROOT_MOUNTS. True when it is on the disk."""
    manifest = bootfiles.fetch_manifest(master, "/run/beoboot/manifest.json", say)
    image = bootfiles.fetch(master, manifest, Stage.ENVROOT, f"/run/beoboot/{Stage.ENVROOT}.img", pins, say, mac)
    on_disk = bool(config.libcache_disk) and mount_local_disk(
        config.libcache_disk, config.libcache_fstype, format_blank=config.libcache_format == "blank", dry_run=dry_run
    )
    if not on_disk:
        syscalls.mount("tmpfs", ENV_ROOT, "tmpfs", 0, "mode=0755", dry_run=dry_run)
    count = cpio.extract_image(image, ENV_ROOT)
    os.unlink(image)
    for mount in mounts.ENV_ROOT_MOUNTS:
        os.makedirs(ENV_ROOT + mount.target, exist_ok=True)
        syscalls.mount(mount.source, ENV_ROOT + mount.target, mount.fstype, mount.flags, mount.data, dry_run=dry_run)
    where = f"on {config.libcache_disk}" if on_disk else "in RAM"
    say(
        f"beoboot: environment root ready at {ENV_ROOT} ({where}, libcache up to {config.libcache_max_bytes >> 20} MiB): "
        f"{count} entries, no programs until a job brings them"
    )
    return on_disk


def mount_local_disk(
    device: str, fstype: str, *, dry_run: bool, format_blank: bool = False, wait: float = DISK_WAIT
) -> bool:
    """Put the environment root and its libcache on the configured local disk: its directory DISK_ENV_DIR,
    bound at ENV_ROOT (one mount, so the libcache's hard links work), cleared of what the last boot's jobs
    left except the libcache, whose objects are checked before use. The rest of the disk is not touched,
    so pointing the config at a disk that holds data loses none; with `format_blank` (config
    libcache_format = "blank") a disk that does not mount and is blank is formatted first, so a new disk
    needs no preparing. False (and the reason on the console and the master) when the disk cannot be used:
    the node then runs from RAM."""
    deadline = time.monotonic() + wait
    while not _is_block_device(device):  # its driver (loaded at start) may still be probing
        if time.monotonic() > deadline:
            say(
                f"beoboot: libcache disk {device}: no such block device after {wait:.0f} s (is its driver in "
                "[images.stage3] modules?); the environment root stays in RAM",
                "error",
            )
            return False
        time.sleep(0.1)
    if not _mount_disk(device, fstype, format_blank=format_blank, dry_run=dry_run):
        return False
    env_dir = os.path.join(DISK_MOUNT, DISK_ENV_DIR)
    os.makedirs(env_dir, exist_ok=True)
    syscalls.mount(env_dir, ENV_ROOT, "", syscalls.MS_BIND, "", dry_run=dry_run)
    for name in os.listdir(ENV_ROOT):
        if name == LIBCACHE_DIR:
            continue
        path = os.path.join(ENV_ROOT, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    os.chmod(ENV_ROOT, 0o755)
    say(f"beoboot: libcache disk {device} ({fstype}): {DISK_ENV_DIR}/ on it is the environment root {ENV_ROOT}")
    return True


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _mount_disk(device: str, fstype: str, *, format_blank: bool, dry_run: bool) -> bool:
    """Mount the libcache disk at DISK_MOUNT, formatting it first when it does not mount, `format_blank`
    allows and it is blank. False, with the reason said, when it stays unusable."""
    try:
        os.makedirs(DISK_MOUNT, exist_ok=True)
        syscalls.mount(device, DISK_MOUNT, fstype, 0, "", dry_run=dry_run)
        return True
    except OSError as exc:
        failure, module = f"cannot mount it as {fstype}: {exc}", f"is {fstype} in [images.stage3] modules"
    if not format_blank:
        return _disk_unusable(device, f"{failure} ({module}, and the disk formatted?)")
    try:
        blank = is_blank(device)
    except OSError as exc:
        return _disk_unusable(device, f"{failure} ({module}?), nor read it to see whether it is blank: {exc}")
    if not blank:
        return _disk_unusable(device, f"{failure} ({module}?); it is not blank, so it will not be formatted")
    try:
        size = format_disk(device, fstype, dry_run=dry_run)
    except (OSError, SupervisorError) as exc:
        return _disk_unusable(device, f"it was blank, but formatting it as {fstype} failed: {exc}")
    say(f"beoboot: libcache disk {device} was blank: formatted it as {fstype} ({size >> 20} MiB)")
    try:
        syscalls.mount(device, DISK_MOUNT, fstype, 0, "", dry_run=dry_run)
    except OSError as exc:
        return _disk_unusable(
            device, f"formatted, but still cannot mount it as {fstype}: {exc} (is {fstype} in [images.stage3] modules?)"
        )
    return True


def _disk_unusable(device: str, why: str) -> bool:
    say(f"beoboot: libcache disk {device}: {why}; the environment root stays in RAM", "error")
    return False


# What must be zero bytes at each end of a disk before it counts as blank: the head holds any partition
# table, filesystem, LVM or RAID label; the tail GPT's backup header (UEFI 2.10, 5.3.2), md 1.0 and ZFS labels.
BLANK_SPAN = 1 << 20


def is_blank(path: str) -> bool:
    """True when the first and the last BLANK_SPAN bytes of the disk (or file) at `path` are all zero."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        tail = max(0, size - BLANK_SPAN)
        return _all_zero(fd, 0, min(size, BLANK_SPAN)) and _all_zero(fd, tail, size - tail)
    finally:
        os.close(fd)


def _all_zero(fd: int, start: int, length: int) -> bool:
    os.lseek(fd, start, os.SEEK_SET)
    while length > 0:
        chunk = os.read(fd, length)
        if not chunk:
            return False  # shorter than its size said: not a disk to format
        if chunk.count(0) != len(chunk):
            return False
        length -= len(chunk)
    return True


# lazy_itable_init, lazy_journal_init: the kernel zeroes the inode tables in the background after the mount
# (and the journal's checksums, seeded by the new filesystem's UUID, never replay stale blocks), where
# mke2fs would write them all first: minutes on a large disk. nodiscard: a blank disk has nothing to
# discard, and discarding all of a large SSD can take minutes too.
MKE2FS_OPTIONS = ("-q", "-F", "-L", "beoboot", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")


def format_disk(device: str, fstype: str, *, dry_run: bool) -> int:
    """Make an `fstype` filesystem on all of `device` with mke2fs; its size in bytes."""
    if fstype not in MKE2FS_FSTYPES:
        raise SupervisorError(f"{MKE2FS_PATH} makes only {', '.join(MKE2FS_FSTYPES)} (config libcache_fstype)")
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    if not dry_run:
        done = run_without_reaper([MKE2FS_PATH, *MKE2FS_OPTIONS, "-t", fstype, device])
        if done.returncode != 0:
            raise SupervisorError(f"{MKE2FS_PATH} exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    return size


def run_without_reaper(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a program to its end with PID 1's SIGCHLD handler set aside: its waitpid(-1) could collect the
    child first, and subprocess then takes the lost exit status for a success (ECHILD: status 0)."""
    handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    finally:
        signal.signal(signal.SIGCHLD, handler)
        if callable(handler):
            handler(signal.SIGCHLD, None)  # the orphans that died meanwhile


def master_timeout(config: AgentConfig) -> float:
    text = cmdline.read().get("master_timeout", "")  # checked there: a finite number of seconds
    return float(text) if text else config.master_timeout


def main(config: AgentConfig, *, dry_run: bool) -> None:
    """Stage 3's program: the node's supervisor until power-off."""
    run(config, dry_run=dry_run)


def run(config: AgentConfig, *, dry_run: bool) -> None:
    signal.signal(signal.SIGCHLD, reap_children)
    handoff = read_handoff()
    keeper = clocksync.ClockKeeper(None if dry_run else clocksync.set_wall_clock, log=say)
    link = MasterLink(handoff.master_url, handoff.mac, Stage.SUPERVISOR, log=say, clock_keeper=keeper)
    link.address = handoff.address  # the DHCP address; with an address plan the master uses its own
    # stage 3 as stage 2 checked it, and the environment root by its pin: the only one it takes
    images = {**handoff.booted, **{k: v for k, v in handoff.pins.items() if k == Stage.ENVROOT}}
    link.booted = p.Booted(link.booted.kernel, images)
    reporter.attach(link)
    if not dry_run:  # the kernel's log, after what stage 2 sent of it
        kmsg.ship(link.queue_log, say, after_seq=handoff.kmsg_seq)
    try:
        with open(MEMORY_REPORT) as f:
            memory = json.load(f)
        say(
            f"beoboot: stage 2 ramdisk freed: {memory['freed_kib']} KiB; MemAvailable "
            f"{memory['mem_available_before_kib']} kB before, {memory['mem_available_after_kib']} kB after"
        )
    except (OSError, ValueError, KeyError):
        pass
    reply = link.register(hwprobe.probe())
    take_permanent_address(reply, handoff, dry_run=dry_run)
    names = NodeNames(reply, reply.address or handoff.address, handoff.master_url, ENV_ROOT, dry_run=dry_run)
    names.resolv = resolv_conf(reply, handoff.dns)
    names.write_root()
    say(f"beoboot: node {reply.number} ({reply.name}), hostname {reply.hostname}, boot {reply.boot}")
    if reply.drivers:  # before the environment root: its disk may be one of the devices they drive
        token = reply.link_token
        link.report_hardware(drivers.load_all(reply.drivers, link, say, token=lambda: token, dry_run=dry_run))
    on_disk = build_env_root(handoff.master_url, handoff.mac, handoff.pins, config, dry_run=dry_run)
    names.write_env_root()
    sitemounts.mount_all(  # before the job link opens: a job sees /home as the master does, or not at all
        reply.mounts,
        ENV_ROOT,
        master_host=urlsplit(handoff.master_url).hostname or "",
        client_address=reply.address or handoff.address,
        say=say,
        failed=lambda detail: link.event(p.MOUNT_FAILED, detail),
        dry_run=dry_run,
    )
    orders: queue.SimpleQueue[p.NodePower] = queue.SimpleQueue()  # bpctl's, put once the jobs have ended
    runner = jobrunner.start_runner(
        handoff.master_url,
        handoff.mac,
        ENV_ROOT,
        config.libcache_max_bytes,
        say,
        token=lambda: link.registration.link_token if link.registration else "",
        verify=on_disk,
        power=orders.put,
    )

    def moved(address: str) -> None:
        link.address = address  # the next heartbeat tells the master, whose host table follows
        if names.move(address):
            say(f"beoboot: {reply.hostname} and {reply.name} now name {address.split('/')[0]}")

    if not dry_run:  # a dry run must not send DHCP or renumber the build host's interfaces
        leasekeeper.start(handoff, say, moved=lambda lease: moved(lease.cidr))
    listeners = listening_sockets()
    say(f"beoboot: listening sockets: {', '.join(listeners) if listeners else 'none'}")
    link.event(p.BootEvent.STAGE3_READY)
    say(f"beoboot: stage 3 ready: node {reply.number} up")

    def take_host_table(version: int) -> bool:
        table = link.hosts()
        if table is None:
            return False  # asked again at the next heartbeat
        names.take_table(table)
        say(f"beoboot: the environment root's /etc/hosts now names {len(table.splitlines())} nodes")
        return True

    order = supervise(
        link,
        master_timeout(config),
        dry_run=dry_run,
        hosts_changed=take_host_table,
        orders=orders,
        lost=config.master_lost,
    )
    if order is not None:
        act_on(order, link, runner, dry_run=dry_run)


POWER_CALLS = {
    p.PowerAction.REBOOT: syscalls.restart,
    p.PowerAction.HALT: syscalls.halt,
    p.PowerAction.POWEROFF: syscalls.power_off,
}


def act_on(order: p.NodePower, link: MasterLink, runner: jobrunner.JobRunner, *, dry_run: bool) -> None:
    """bpctl's order, with the jobs ended and the heartbeats stopped: the last log lines go out, the job
    link closes (which tells the master), the disks are synced, and the kernel acts."""
    say(f"beoboot: {order.action}, as {order.by or 'the master'} asked")
    link.flush(force=True)
    runner.stop()
    say(f"beoboot: {syscalls.sync(dry_run=dry_run)}")
    say(f"beoboot: {POWER_CALLS[order.action](dry_run=dry_run)}")  # returns only in a dry run or on refusal


def supervise(
    link: MasterLink,
    timeout: float,
    *,
    dry_run: bool,
    hosts_changed: Callable[[int], bool] = lambda version: True,
    orders: queue.SimpleQueue[p.NodePower] | None = None,
    lost: str = "reboot",
) -> p.NodePower | None:
    """Heartbeat; when the master has not answered for `timeout` seconds, do what `lost` says: "reboot",
    "halt", or "keep" (the jobs run on, the heartbeats go on until the master answers again). A heartbeat
    reply with a new host table version calls `hosts_changed`, which says whether it took the new table.
    Returns the first power order from `orders`, with the heartbeats stopped, or None after a dry run's
    reboot or halt."""
    if orders is None:
        orders = queue.SimpleQueue()
    last_answer = time.monotonic()
    kept_since = 0.0  # while the master is lost and the node keeps on: since when
    hosts_version = 0  # the empty table's: a cluster with no addresses needs no fetch
    while True:
        interval = link.registration.heartbeat_interval if link.registration else 5.0
        if (reply := link.heartbeat(hwprobe.uptime(), hwprobe.load())) is not None:
            last_answer = time.monotonic()
            if kept_since:
                say(f"beoboot: master {link.base_url} back after {last_answer - kept_since + timeout:.0f} s")
                kept_since = 0.0
            link.flush()
            if reply.hosts_version != hosts_version and hosts_changed(reply.hosts_version):
                hosts_version = reply.hosts_version
        elif time.monotonic() - last_answer > timeout and not kept_since:
            if lost == "keep":
                say(f"beoboot: master {link.base_url} lost for {timeout:.0f} s: jobs run on, waiting for it", "error")
                kept_since = time.monotonic()
            else:
                act = syscalls.halt if lost == "halt" else syscalls.restart
                say(f"beoboot: master {link.base_url} lost for {timeout:.0f} s: {lost}", "error")
                say(f"beoboot: {act(dry_run=dry_run)}")
                return None
        try:
            return orders.get(timeout=min(interval, max(timeout / 4, 0.5)))
        except queue.Empty:
            pass
