"""The libcache (fetch, verify, link, evict), the job manifest and the small parsers of jobs. No master
process, no root needed: objects come from a tiny HTTP server in a thread."""

import hashlib
import http.server
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from master_helpers import BPSH_SCRIPT

from agent import protocol as p
from beoboot.master.bpsh.client import BpshOptions, BpshUsageError, encode_request, parse_args
from beoboot.master.bpsh.localjobs import RequestError, decode_request
from beoboot.master.manifest.describe import (
    JobError,
    ManifestBuilder,
    cache_path,
    env_command,
    find_command,
    parse_shebang,
    perl_runtime,
    python_runtime,
    wrapped_commands,
)
from beoboot.master.manifest.environ import normalised_name, terminfo_paths
from beoboot.master.objects import ObjectStore
from stage3 import libcache
from stage3.libcache import LibCache, LibCacheError, object_name
from stage3.wsclient import mask


class ObjectServer:
    """Serves /objects/sha256/<hex> from a dict; `lie` maps a digest to wrong bytes to serve instead."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.lie: dict[str, bytes] = {}
        self.busy = 0  # answer this many requests 503 (busy) with Retry-After: 1, first
        self.requests = 0
        self.batch_asked = threading.Event()  # a batch (POST) came: it fails, as from a master without them,
        self.batch_fails = threading.Event()  # once this is set
        self.batch_fails.set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.batch_asked.set()
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.said_busy():
                    outer.batch_fails.wait(30)
                    self.send_error(501)

            def do_GET(self) -> None:  # noqa: N802
                outer.requests += 1
                if self.said_busy():
                    return
                digest = self.path.rsplit("/", 1)[-1]
                body = outer.lie.get(digest, outer.objects.get(digest))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def said_busy(self) -> bool:
                if outer.busy <= 0:
                    return False
                outer.busy -= 1
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"busy")
                return True

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path: str, content: bytes, mode: int = 0o755) -> p.JobFile:
        digest = hashlib.sha256(content).hexdigest()
        self.objects[digest] = content
        return p.JobFile(path, mode, digest, len(content))


@pytest.fixture
def server():
    s = ObjectServer()
    yield s
    s.server.shutdown()


@pytest.fixture
def env_root(tmp_path):
    root = tmp_path / "env"
    (root / "tmp").mkdir(parents=True)
    return root


def cache_for(env_root: Path, server: ObjectServer, **kw) -> LibCache:
    return LibCache(str(env_root / ".libcache"), str(env_root), server.url, **kw)


def test_objects_are_fetched_once_verified_and_hard_linked(server, env_root):
    files = [
        server.add("/usr/bin/prog", b"program"),
        server.add("/usr/lib/libx.so.1", b"library", 0o644),
        p.JobFile("/lib", 0o777, link="usr/lib"),
        p.JobFile("/usr/share/empty", 0o755),
    ]
    cache = cache_for(env_root, server)
    assert cache.ensure(files) == 2
    cache.materialise(files)
    linked = os.stat(env_root / "usr/lib/libx.so.1")
    obj = os.stat(env_root / ".libcache/objects" / object_name(files[1]))
    assert os.path.samestat(linked, obj) and linked.st_nlink == 2
    assert stat.S_IMODE(linked.st_mode) == 0o444  # write bits dropped: shared by every job
    assert (env_root / "usr/bin/prog").read_bytes() == b"program"
    assert os.readlink(env_root / "lib") == "usr/lib" and (env_root / "usr/share/empty").is_dir()
    before = server.requests
    assert cache.ensure(files) == 0 and server.requests == before
    # a second cache over the same directory finds the objects already there (agent restart)
    assert cache_for(env_root, server).missing(files) == []


def test_a_job_waiting_for_a_batch_that_fails_fetches_the_object_itself(server, env_root):
    """Job A's batch holds two small objects while it is asked; job B wants one of them and waits for it.
    The batch fails (a master without batches): A fetches its objects one by one, and so does B, instead of
    failing on another job's best-effort batch."""
    first, second = server.add("/usr/lib/a", b"a" * 100), server.add("/usr/lib/b", b"b" * 200)
    cache = cache_for(env_root, server)
    server.batch_fails.clear()
    failures = []

    def job(files):
        try:
            cache.ensure(files)
        except LibCacheError as exc:
            failures.append(exc)

    a = threading.Thread(target=job, args=([first, second],))
    a.start()
    assert server.batch_asked.wait(10)
    b = threading.Thread(target=job, args=([first],))
    b.start()
    time.sleep(0.3)  # B is waiting on A's batch now
    server.batch_fails.set()
    a.join(10)
    b.join(10)
    assert failures == []
    assert cache.missing([first, second]) == []


def test_a_master_that_says_busy_is_waited_for_and_no_connection_is_kept(server, env_root):
    """503 with Retry-After is the master's admission queue: waited out as it says, never a failed attempt
    (there are FETCH_ATTEMPTS of those); and an idle node keeps no download connection to the master."""
    files = [server.add(f"/usr/lib/lib{i}.so", bytes([i]) * 1000, 0o644) for i in range(4)]
    server.busy = 12  # more than 4 objects x FETCH_ATTEMPTS
    waits: list[float] = []
    cache = cache_for(env_root, server, sleep=waits.append)
    assert cache.ensure(files) == 4
    assert len(waits) == 12 and all(0.75 <= w <= 1.25 for w in waits), waits
    assert cache.http._idle == []


def test_a_master_busy_past_the_fetchs_patience_fails_it_naming_why(server, env_root, monkeypatch):
    monkeypatch.setattr(libcache, "BUSY_PATIENCE", 3.0)
    now = [0.0]
    files = [server.add("/usr/lib/libbusy.so", b"x" * 100, 0o644)]
    server.busy = 1000
    cache = cache_for(env_root, server, sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    with pytest.raises(LibCacheError, match="stayed busy for 3 s"):
        cache.ensure(files)
    assert 2 <= server.requests <= 6


def test_a_busy_master_is_waited_out_once_per_job_batch_and_single_fetches_together(server, env_root, monkeypatch):
    """Small objects go in a batch first, then one by one: a master busy all along fails the job after
    BUSY_PATIENCE in all, not after it once for the batch and again for the objects."""
    monkeypatch.setattr(libcache, "BUSY_PATIENCE", 3.0)
    now = [0.0]
    files = [server.add(f"/usr/lib/libsmall{i}.so", bytes([i]) * 100, 0o644) for i in range(2)]
    server.busy = 1000
    cache = cache_for(env_root, server, sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    with pytest.raises(LibCacheError, match="stayed busy for 3 s"):
        cache.ensure(files)
    assert server.batch_asked.is_set()
    assert now[0] <= 3.0 * 1.25, now[0]


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root, as the node's agent is")
def test_files_and_directories_get_the_masters_owner_so_setuid_stays_with_it(server, env_root):
    """The same content owned by root and by nobody is two objects, each with its owner; a setuid program
    nobody owns stays setuid to nobody (held by root it would have made anyone root). A directory an
    earlier job made on the way gets the master's mode and owner when a manifest names it."""
    as_root = server.add("/usr/bin/tool", b"same bytes", 0o755)
    as_nobody = p.JobFile("/home/nobody/tool", 0o4755, as_root.sha256, as_root.size, uid=65534, gid=65534)
    cache = cache_for(env_root, server)
    cache.ensure([as_root, as_nobody])
    cache.materialise([as_root, as_nobody])
    root_st, nobody_st = os.stat(env_root / "usr/bin/tool"), os.stat(env_root / "home/nobody/tool")
    assert (root_st.st_uid, stat.S_IMODE(root_st.st_mode)) == (0, 0o555)
    assert (nobody_st.st_uid, nobody_st.st_gid, stat.S_IMODE(nobody_st.st_mode)) == (65534, 65534, 0o4555)
    assert not os.path.samestat(root_st, nobody_st)
    assert os.stat(env_root / "home").st_uid == 0  # made on the way, as root's 0755
    cache.materialise([p.JobFile("/home", 0o700, uid=65534, gid=65534)])
    home = os.stat(env_root / "home")
    assert (home.st_uid, stat.S_IMODE(home.st_mode)) == (65534, 0o700)


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root, as the node's agent is")
def test_an_acl_comes_along_without_its_write_permissions(server, env_root, tmp_path):
    """A file opened to a user by an ACL is held with that ACL, minus writing: an object is shared."""
    source = tmp_path / "acl-source"
    source.write_text("x")
    source.chmod(0o640)
    subprocess.run(["setfacl", "-m", "u:65534:rw", str(source)], check=True)
    acl = os.getxattr(source, "system.posix_acl_access").hex()
    plain = server.add("/data/plain", b"same", 0o640)
    with_acl = p.JobFile("/data/shared", 0o660, plain.sha256, plain.size, acl=acl)
    cache = cache_for(env_root, server)
    cache.ensure([plain, with_acl])
    cache.materialise([plain, with_acl])
    listing = subprocess.run(
        ["getfacl", "-cpn", str(env_root / "data/shared")], capture_output=True, text=True, check=True
    ).stdout
    assert "user:65534:r--" in listing and "w" not in listing
    assert object_name(plain) != object_name(with_acl)


def test_a_corrupt_object_is_refused_and_never_visible(server, env_root):
    entry = server.add("/bin/x", b"the real bytes")
    server.lie[entry.sha256] = b"something else"
    cache = cache_for(env_root, server)
    with pytest.raises(LibCacheError, match="does not match"):
        cache.ensure([entry])
    assert os.listdir(env_root / ".libcache/objects") == [] and os.listdir(env_root / ".libcache/tmp") == []
    del server.lie[entry.sha256]  # the master serves it right again: fetched afresh
    assert cache.ensure([entry]) == 1


def test_a_half_written_object_left_by_a_crash_is_discarded(server, env_root):
    (env_root / ".libcache/tmp").mkdir(parents=True)
    (env_root / ".libcache/tmp/abc.755.1").write_bytes(b"half")
    cache_for(env_root, server)
    assert os.listdir(env_root / ".libcache/tmp") == []


def test_a_changed_library_replaces_the_old_link(server, env_root):
    cache = cache_for(env_root, server)
    old = server.add("/usr/lib/libv.so", b"version 1", 0o644)
    new = server.add("/usr/lib/libv.so", b"version 2", 0o644)
    for entry in (old, new):
        cache.ensure([entry])
        cache.materialise([entry])
    assert (env_root / "usr/lib/libv.so").read_bytes() == b"version 2"


def test_objects_kept_from_an_earlier_boot_are_checked_and_damaged_ones_fetched_again(server, env_root):
    """A libcache on a local disk outlives a reboot: its objects are hashed again before any job uses them."""
    good, bad = server.add("/bin/good", b"good bytes"), server.add("/bin/bad", b"bad bytes")
    first_boot = cache_for(env_root, server)
    first_boot.ensure([good, bad])
    damaged = env_root / ".libcache" / "objects" / object_name(bad)
    damaged.chmod(0o644)
    damaged.write_bytes(b"bad bytez")  # a power cut, a disk fault
    next_boot = cache_for(env_root, server)
    assert next_boot.verify() == (1, 1)
    assert next_boot.names() == {object_name(good)} and not damaged.exists()
    assert next_boot.ensure([good, bad]) == 1  # only the damaged one comes from the master again
    assert damaged.read_bytes() == b"bad bytes"


def test_lru_eviction_spares_held_objects_and_drops_links(server, env_root):
    clock = iter(range(1000))
    cache = cache_for(env_root, server, max_bytes=25, clock=lambda: float(next(clock)))
    a, b, c = (server.add(f"/bin/{n}", n.encode() * 10) for n in "abc")
    for entry in (a, b):
        cache.ensure([entry])
        cache.materialise([entry])
    held = cache.hold([a])  # a is older than b, but a running job holds it
    cache.ensure([c])
    cache.materialise([c])
    assert cache.evict() == [object_name(b)]
    assert not (env_root / "bin/b").exists() and (env_root / "bin/a").exists()
    cache.max_bytes = 15
    cache.release(held)  # a is no longer held, and the least recently used
    assert cache.names() == {object_name(c)}


@pytest.mark.skipif(os.getuid() != 0, reason="mounts a tmpfs: needs root")
def test_copies_on_another_mount_are_kept_once_and_go_with_their_object(server, env_root):
    """/tmp in the environment root is its own tmpfs: a job file there is a copy, not a link. It is not
    copied again for every job, it counts towards the cache's size, and eviction removes it as it removes
    links."""
    (env_root / "tmp").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "beoboot-test", str(env_root / "tmp")], check=True)
    try:
        clock = iter(range(1000))
        cache = cache_for(env_root, server, max_bytes=25, clock=lambda: float(next(clock)))
        a = server.add("/tmp/job/a.py", b"a" * 10)
        cache.ensure([a])
        cache.materialise([a])
        copy = os.stat(env_root / "tmp/job/a.py")
        assert copy.st_nlink == 1 and (env_root / "tmp/job/a.py").read_bytes() == b"a" * 10
        cache.materialise([a])
        assert os.path.samestat(copy, os.stat(env_root / "tmp/job/a.py"))  # kept, not copied again
        assert cache.total_bytes() == 20  # the object and its copy
        b = server.add("/bin/b", b"b" * 10)
        cache.ensure([b])
        cache.materialise([b])
        assert cache.total_bytes() == 30  # over 25 only because the copy counts
        assert cache.evict() == [object_name(a)]
        assert not (env_root / "tmp/job/a.py").exists()
    finally:
        subprocess.run(["umount", str(env_root / "tmp")], check=True)


def test_links_are_followed_inside_the_environment_root_as_the_jobs_follow_them(server, env_root, tmp_path):
    """An absolute link means the same path inside the root, as it does to the chrooted jobs: the file goes
    there, never to the supervisor's own path of that name."""
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = cache_for(env_root, server)
    evil = [p.JobFile("/usr", 0o777, link=str(outside)), server.add("/usr/bin/x", b"x")]
    cache.ensure(evil)
    cache.materialise(evil)
    assert os.listdir(outside) == []
    assert (env_root / str(outside).lstrip("/") / "bin/x").read_bytes() == b"x"
    with pytest.raises(LibCacheError, match="names the environment root or its cache"):
        cache.job_path("/.libcache/objects/x")


def a_users_home(env_root: Path, uid: int = 1000) -> Path:
    home = env_root / "home/u"
    home.mkdir(parents=True)
    os.chown(home, uid, uid)
    return home


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root, as the node's agent is")
def test_a_link_a_users_job_made_is_never_followed(server, env_root, tmp_path):
    """`ln -s / ~/data` by a job, then a manifest naming ~/data/etc (a directory of the user's on the
    master): followed from outside, the agent would chown the supervisor's /etc; followed inside, the
    environment root's. Neither: the path is refused, and both stay root's."""
    home = a_users_home(env_root)
    (env_root / "etc").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, target in (("data", "/"), ("out", str(outside))):
        os.symlink(target, home / name)
        os.lchown(home / name, 1000, 1000)  # the user's job made them
    tool = replace(server.add("/home/u/out/tool", b"t"), uid=1000, gid=1000)
    cache = cache_for(env_root, server)
    cache.ensure([tool])
    for entry in (p.JobFile("/home/u/data/etc", 0o700, uid=1000, gid=1000), tool):
        with pytest.raises(LibCacheError, match="a link that uid 1000 made"):
            cache.materialise([entry])
    assert os.stat(env_root / "etc").st_uid == 0 and stat.S_IMODE(os.stat(env_root / "etc").st_mode) == 0o755
    assert os.listdir(outside) == []
    # where the master has that link too, the manifest brings it with its owner there, the user: made again
    # as the user's, it is still no way through; the master names the file at its real path
    cache.materialise([p.JobFile("/home/u/out", 0o777, link="/opt/out", uid=1000, gid=1000)])
    assert os.lstat(home / "out").st_uid == 1000 and os.readlink(home / "out") == "/opt/out"
    with pytest.raises(LibCacheError, match="a link that uid 1000 made"):
        cache.materialise([tool])
    cache.materialise([replace(tool, path="/opt/out/tool")])
    assert (env_root / "opt/out/tool").read_bytes() == b"t" and os.listdir(outside) == []


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root, as the node's agent is")
def test_a_link_a_manifest_brings_keeps_its_masters_owner_and_gives_way_to_the_masters_directory(server, env_root):
    """A user's `~/evil -> /etc` on the master is the user's on the node: no path is walked through it; and
    once ~/evil is the user's directory on the master, the next manifest's directory replaces the link, so
    the user's files land there, not in /etc."""
    a_users_home(env_root)
    (env_root / "etc").mkdir()
    (env_root / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\n")
    cache = cache_for(env_root, server)
    cache.materialise([p.JobFile("/home/u/evil", 0o777, link="/etc", uid=1000, gid=1000)])
    assert os.lstat(env_root / "home/u/evil").st_uid == 1000
    passwd = replace(server.add("/home/u/evil/passwd", b"root::0:0::/:/bin/sh\n", 0o644), uid=1000, gid=1000)
    cache.ensure([passwd])
    cache.materialise([p.JobFile("/home/u/evil", 0o755, uid=1000, gid=1000), passwd])
    assert (env_root / "etc/passwd").read_text() == "root:x:0:0::/:/bin/sh\n"
    assert not os.path.islink(env_root / "home/u/evil") and os.stat(env_root / "home/u/evil").st_uid == 1000
    assert (env_root / "home/u/evil/passwd").read_bytes() == b"root::0:0::/:/bin/sh\n"


def test_a_file_the_agent_keeps_is_refused_directly_or_through_roots_link_and_nothing_is_written(server, env_root):
    """/etc/passwd named, or reached through a link root made on the node (/srv/e -> /etc, /srv/up -> ../../..):
    the manifest is refused by name before any of its paths is made."""
    (env_root / "etc").mkdir()
    (env_root / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (env_root / "srv").mkdir()
    os.symlink("/etc", env_root / "srv/e")
    os.symlink("../../..", env_root / "srv/up")
    cache = cache_for(env_root, server)
    for path, message in (
        ("/etc/passwd", "/etc/passwd is the node's own"),
        ("/srv/e/passwd", "/srv/e/passwd leads to /etc/passwd, which is the node's own"),
        ("/srv/up/etc/ld.so.preload", "leads to /etc/ld.so.preload, which is the node's own"),
    ):
        evil = server.add(path, b"evil", 0o644)
        cache.ensure([evil])
        manifest = [p.JobFile("/opt/new", 0o755), p.JobFile("/opt/l", 0o777, link="x"), evil]
        with pytest.raises(LibCacheError, match=message):
            cache.materialise(manifest)
        assert not (env_root / "opt").exists() and not (env_root / "etc/ld.so.preload").exists()
    assert (env_root / "etc/passwd").read_text() == "root:x:0:0::/:/bin/sh\n"


def test_a_directory_the_manifest_opens_to_others_stops_roots_links_in_it_for_that_same_manifest(server, env_root):
    """srv/d was root's 0755 with root's link l -> /usr in it; the master's srv/d is 0777 now, and a user
    put a directory of their own at l. The manifest's directory comes first: from then on l is no way
    through, though the same manifest's walk had found it one a moment before."""
    (env_root / "srv/d").mkdir(parents=True)
    os.symlink("/usr", env_root / "srv/d/l")
    cache = cache_for(env_root, server)
    tool = server.add("/srv/d/l/lib/tool", b"t")
    cache.ensure([tool])
    with pytest.raises(LibCacheError, match="others than root may write"):
        cache.materialise([p.JobFile("/srv/d", 0o777), tool])
    assert not (env_root / "usr/lib/tool").exists()


def test_a_link_to_a_file_the_agent_keeps_is_replaced_never_written_through(server, env_root):
    (env_root / "etc").mkdir()
    (env_root / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\n")
    cache = cache_for(env_root, server)
    cache.materialise([p.JobFile("/home/pw", 0o777, link="/etc/passwd")])
    mine = server.add("/home/pw", b"mine", 0o644)
    cache.ensure([mine])
    cache.materialise([mine])
    assert (env_root / "home/pw").read_bytes() == b"mine" and not os.path.islink(env_root / "home/pw")
    assert (env_root / "etc/passwd").read_text() == "root:x:0:0::/:/bin/sh\n"


def test_no_path_leads_into_the_libcache(server, env_root):
    """A link (even one root made) into the cache cannot make a job file replace a verified object."""
    victim = server.add("/usr/lib/libc.so.6", b"the real libc")
    cache = cache_for(env_root, server)
    cache.ensure([victim])
    cache.materialise([victim])
    evil_bytes = server.add("/x", b"EVIL BYTES")
    evil = [
        p.JobFile("/home/x", 0o777, link="../.libcache/objects"),
        replace(evil_bytes, path=f"/home/x/{object_name(victim)}"),
    ]
    cache.ensure(evil)
    with pytest.raises(LibCacheError, match="leads into the libcache"):
        cache.materialise(evil)
    assert (env_root / "usr/lib/libc.so.6").read_bytes() == b"the real libc"


def test_a_file_the_master_turned_into_a_link_becomes_the_link(server, env_root):
    old = server.add("/usr/bin/tool", b"version 1")
    cache = cache_for(env_root, server)
    cache.ensure([old])
    cache.materialise([old])
    cache.materialise([p.JobFile("/usr/bin/tool", 0o777, link="tool-2")])
    assert os.readlink(env_root / "usr/bin/tool") == "tool-2"


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root, as the node's agent is")
def test_a_directory_loses_the_acl_the_master_took_away(server, env_root, tmp_path):
    source = tmp_path / "acl-source"
    source.mkdir(mode=0o750)
    subprocess.run(["setfacl", "-m", "u:65534:rx", str(source)], check=True)
    opened = p.JobFile("/data", 0o750, uid=1000, gid=1000, acl=os.getxattr(source, "system.posix_acl_access").hex())
    cache = cache_for(env_root, server)
    cache.materialise([opened])
    assert (
        "user:65534:r-x"
        in subprocess.run(["getfacl", "-cpn", str(env_root / "data")], capture_output=True, text=True).stdout
    )
    cache.materialise([replace(opened, acl="")])  # the mode and owner as before: only the ACL is gone
    with pytest.raises(OSError):
        os.getxattr(env_root / "data", "system.posix_acl_access")


def test_objects_kept_from_an_earlier_run_are_older_than_any_used_now(server, env_root):
    """Their age comes from their mtime, but in this run's monotonic clock: in the wall clock's seconds
    they would look newer than anything used since and never be evicted."""
    first, second = server.add("/bin/a", b"a" * 10), server.add("/bin/b", b"b" * 10)
    cache = cache_for(env_root, server)
    cache.ensure([first])
    restarted = cache_for(env_root, server, max_bytes=15)
    restarted.ensure([second])
    restarted.materialise([second])
    assert restarted.evict() == [object_name(first)]


def test_eviction_gives_a_running_job_back_the_version_it_holds(server, env_root):
    """Job A runs with mod.py v1; job B replaces it with v2 and ends; evicting v2 must not leave A's path
    empty: v1 goes back."""
    v1, v2 = server.add("/lib/mod.py", b"v1" * 5, 0o644), server.add("/lib/mod.py", b"v2" * 5, 0o644)
    cache = cache_for(env_root, server, max_bytes=15)
    _, held_by_a = cache.ensure_held([v1])
    cache.materialise([v1])
    _, held_by_b = cache.ensure_held([v2])
    cache.materialise([v2])
    cache.release(held_by_b)
    assert object_name(v2) not in cache.names()
    assert (env_root / "lib/mod.py").read_bytes() == b"v1" * 5
    cache.release(held_by_a)


def test_holding_is_all_or_nothing_and_fetches_again_what_was_evicted_meanwhile(server, env_root):
    a, b = server.add("/bin/a", b"a"), server.add("/bin/b", b"b")
    cache = cache_for(env_root, server)
    cache.ensure([a])
    with pytest.raises(LibCacheError, match="not cached"):
        cache.hold([a, b])
    cache.max_bytes = 0
    assert cache.evict() == [object_name(a)]  # nothing was left held by the failed hold
    cache.max_bytes = 1 << 20

    class EvictedOnce(LibCache):
        """Another job's release() evicts what this job just fetched, before it can hold it."""

        evicted = False

        def ensure(self, files):
            fetched = super().ensure(files)
            if not self.evicted:
                self.evicted, self.max_bytes = True, 0
                self.evict()
                self.max_bytes = 1 << 20
            return fetched

    racing = EvictedOnce(str(env_root / ".libcache"), str(env_root), server.url)
    fetched, held = racing.ensure_held([a, b])
    assert fetched == 4 and sorted(held) == sorted(map(object_name, (a, b)))


# --- manifests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"#!/bin/sh\necho", ("/bin/sh",)),
        (b"#! /usr/bin/env python3 \n", ("/usr/bin/env", "python3")),
        (b"#!/bin/sh -e -x\n", ("/bin/sh", "-e -x")),  # the kernel passes one argument
        (b"\x7fELF", None),
        (b"#!\n", None),
    ],
)
def test_parse_shebang(head, expected):
    assert parse_shebang(head) == expected


def test_find_command(tmp_path):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert find_command("tool", f"/nonexistent:{tmp_path}", "/") == str(tool)
    assert find_command("./tool", "", str(tmp_path)) == str(tool)
    with pytest.raises(JobError, match="not found on the master's PATH"):
        find_command("no-such-tool", str(tmp_path), "/")


def test_a_cache_argument_naming_a_command_gets_the_path_to_give(tmp_path):
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (tmp_path / "data").write_text("x")
    assert cache_path("data", str(tool.parent), str(tmp_path)) == str(tmp_path / "data")
    assert cache_path("../x/y", str(tool.parent), str(tmp_path / "bin")) == str(tmp_path / "x/y")
    assert cache_path("missing", str(tool.parent), str(tmp_path)) == str(tmp_path / "missing")
    with pytest.raises(JobError, match=f"no such file or directory in {tmp_path}") as caught:
        cache_path("tool", str(tool.parent), str(tmp_path))
    assert caught.value.hint == f"--cache takes paths; to bring the command tool, name its path: --cache {tool}"


@pytest.mark.parametrize(
    "shebang, expected",
    [
        (("/usr/bin/env", "python3"), "python3"),
        (("/usr/bin/env", "-S python3 -u"), "python3"),
        (("/usr/bin/env", "LC_ALL=C perl -w"), "perl"),
        (("/usr/bin/env", "-u HOME python3"), None),  # an option env reads a value for: not guessed
        (("/usr/bin/env",), None),
        (("/bin/sh", "-e"), None),
    ],
)
def test_env_command(shebang, expected):
    assert env_command(shebang) == expected


def test_an_env_script_brings_the_command_the_jobs_path_finds(tmp_path):
    """'#!/usr/bin/env NAME' runs NAME from the job's PATH on the node: the NAME that PATH finds on the
    master comes along, the closure is kept per PATH, and a NAME put earlier on the PATH later wins."""
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
    tool = second / "greet"
    tool.write_text("#!/bin/sh\necho from second\n")
    tool.chmod(0o755)
    script = tmp_path / "job"
    script.write_text("#!/usr/bin/env greet\n")
    script.chmod(0o755)
    builder = ManifestBuilder(ObjectStore())
    path_env = f"{first}:{second}:/usr/bin:/bin"

    def paths(path_env):
        request = p.JobRequest("0", (str(script),), {"PATH": path_env}, "/", 0, 0)
        return {f.path for f in builder.build(request).files}

    found = paths(path_env)
    assert {str(script), str(tool), os.path.realpath("/usr/bin/env"), os.path.realpath("/bin/sh")} <= found
    other = tmp_path / "other" / "greet"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\necho from other\n")
    other.chmod(0o755)
    assert str(other) in paths(f"{other.parent}:/usr/bin:/bin") and str(tool) in paths(path_env)  # per PATH
    earlier = first / "greet"
    earlier.write_text("#!/bin/sh\necho from first\n")
    earlier.chmod(0o755)
    assert str(earlier) in paths(path_env) and str(tool) not in paths(path_env)
    with pytest.raises(JobError, match="names greet: command not found on the master's PATH"):
        paths("/usr/bin:/bin")


def test_python_runtime_rule():
    assert python_runtime("/usr/bin/python3.11") == [
        "/usr/lib/python3.11/encodings",
        "/usr/lib/python3.11/os.py",
        "/usr/lib/python3.11/lib-dynload/",
    ]
    assert python_runtime("/usr/bin/perl") == []


def test_perl_runtime_rule_brings_perl_base_without_unicore():
    needed = perl_runtime("/usr/bin/perl5.36.0")
    assert needed == perl_runtime("/usr/bin/perl") and "/etc/perl" in needed
    base = next(path for path in needed if path.endswith("/perl-base/"))
    assert f"{base}strict.pm" in needed and f"{base}POSIX.pm" in needed and f"{base}unicore" not in needed
    assert perl_runtime("/usr/bin/python3.11") == [] and perl_runtime("/usr/bin/perldoc") == []


def test_manifest_of_a_script_brings_its_interpreter_and_hashes_are_cached(tmp_path):
    script = tmp_path / "hello"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    store = ObjectStore()
    builder = ManifestBuilder(store)
    request = p.JobRequest("0", (str(script),), {"PATH": "/usr/bin:/bin"}, "/", 0, 0)
    manifest = builder.build(request)
    paths = {f.path for f in manifest.files}
    real_sh = os.path.realpath("/bin/sh")
    assert str(script) in paths and real_sh in paths and any("libc.so" in path for path in paths)
    hashed = store.hashed
    builder.build(request)
    assert store.hashed == hashed  # nothing re-read
    script.write_text("#!/bin/sh\necho changed\n")
    changed = {f.path: f.sha256 for f in builder.build(request).files}
    assert changed[str(script)] == hashlib.sha256(b"#!/bin/sh\necho changed\n").hexdigest()
    assert store.lookup(changed[str(script)]) == str(script)


def test_a_cache_tree_is_described_once_and_again_after_any_change_in_it(tmp_path):
    """--cache trees are kept described (inotify on their directories): a job costs no walk, and a file
    added deep down, edited in place, or removed shows in the next manifest. A link to a tree brings both."""
    tree = tmp_path / "modules"
    (tree / "deep" / "er").mkdir(parents=True)
    (tree / "top.pm").write_text("1;\n")
    (tmp_path / "current").symlink_to("modules")
    builder = ManifestBuilder(ObjectStore())
    request = p.JobRequest(
        "0", ("/bin/true",), {"PATH": "/usr/bin:/bin"}, "/", 0, 0, cache=(str(tmp_path / "current"),)
    )

    def files():
        built = builder.build(request)
        assert builder.build_cached(request) == built  # what the event loop takes, once built
        return {f.path: f for f in built.files}

    first = files()
    assert first[str(tmp_path / "current")].link == "modules" and str(tree / "top.pm") in first
    assert str(tree / "deep" / "er") in first  # empty directories come too
    assert builder.build_cached(request) is not None
    (tree / "deep" / "er" / "new.pm").write_text("2;\n")
    assert builder.build_cached(request) is None  # changed: built again, off the event loop
    assert str(tree / "deep" / "er" / "new.pm") in files()
    with open(tree / "top.pm", "a") as f:
        f.write("# edited\n")
    assert files()[str(tree / "top.pm")].sha256 == hashlib.sha256(b"1;\n# edited\n").hexdigest()
    (tree / "deep" / "er" / "new.pm").unlink()
    assert str(tree / "deep" / "er" / "new.pm") not in files()


def test_the_locale_the_jobs_environment_names_comes_along():
    builder = ManifestBuilder(ObjectStore())

    def locale_files(env):
        request = p.JobRequest("0", ("/bin/true",), {"PATH": "/usr/bin:/bin", **env}, "/", 0, 0)
        return {f.path for f in builder.build(request).files if f.path.startswith("/usr/lib/locale")}

    c_utf8 = locale_files({"LANG": "C.UTF-8"})  # Debian installs it as the directory C.utf8
    assert "/usr/lib/locale/C.utf8/LC_CTYPE" in c_utf8
    assert locale_files({"LC_ALL": "C", "LANG": "C.UTF-8"}) == set()  # LC_ALL overrides
    assert locale_files({"LC_CTYPE": "C.UTF-8"}) == c_utf8
    assert locale_files({"LANG": "xx_YY.UTF-8"}) <= {"/usr/lib/locale/locale-archive"}  # not on the master either
    assert locale_files({}) == set()


def test_the_masters_time_zone_comes_along_and_the_one_tz_names(tmp_path):
    builder = ManifestBuilder(ObjectStore())

    def zone_files(env):
        request = p.JobRequest("0", ("/bin/true",), {"PATH": "/usr/bin:/bin", **env}, "/", 0, 0)
        return {f.path: f for f in builder.build(request).files if "zoneinfo" in f.path or f.path == "/etc/localtime"}

    found = zone_files({})
    assert found["/etc/localtime"].link == os.readlink("/etc/localtime") and os.path.realpath("/etc/localtime") in found
    paris = zone_files({"TZ": ":Europe/Paris"}) if os.path.isfile("/usr/share/zoneinfo/Europe/Paris") else None
    assert paris is None or "/usr/share/zoneinfo/Europe/Paris" in paris
    assert zone_files({"TZ": "../../etc/shadow"}).keys() == found.keys()  # names a zone, not any file
    assert zone_files({"TZ": "CET-1CEST"}).keys() == found.keys()  # a rule, no file


@pytest.mark.parametrize(
    "argv, wrapped",
    [
        (("nice", "-n", "5", "true"), ["true"]),
        (("/usr/bin/timeout", "-s", "KILL", "60", "true"), ["true"]),
        (("env", "-i", "A=1", "B=2", "true"), ["true"]),
        (("nice", "timeout", "9", "true", "sleep"), ["timeout", "true"]),  # true is no wrapper: sleep is its argument
        (("env",), []),
        (("true", "nice"), []),
        (("xargs", "-n1", "echo"), ["echo"]),
    ],
)
def test_a_wrapper_brings_the_command_it_runs(argv, wrapped):
    assert [os.path.basename(path) for path in wrapped_commands(argv, "/usr/bin:/bin", "/")] == wrapped


def test_a_named_program_that_cannot_be_described_does_not_stop_the_job(tmp_path):
    """Words a shell text or a wrapper names are brought when they can be; one that cannot (a script
    whose interpreter the master lacks) is left to fail on the node, if the job runs it at all."""
    broken = tmp_path / "broken"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    request = p.JobRequest("0", ("sh", "-c", "broken || ls"), {"PATH": f"{tmp_path}:/usr/bin:/bin"}, "/", 0, 0)
    paths = {f.path for f in ManifestBuilder(ObjectStore()).build(request).files}
    assert os.path.realpath("/usr/bin/ls") in paths and str(broken) not in paths


def test_the_terminfo_of_term_and_of_dumb_come_along():
    assert terminfo_paths({"TERM": "xterm"}) == ["/lib/terminfo/x/xterm", "/lib/terminfo/d/dumb"]
    assert terminfo_paths({"TERM": "../../etc/passwd"}) == terminfo_paths({}) == ["/lib/terminfo/d/dumb"]


@pytest.mark.parametrize(
    "name, normalised",
    [
        ("C.UTF-8", "C.utf8"),
        ("en_GB.ISO-8859-1@euro", "en_GB.iso88591@euro"),
        ("de_DE.8859-15", "de_DE.iso885915"),
        ("POSIX", "POSIX"),
    ],
)
def test_locale_names_are_normalised_as_glibc_does(name, normalised):
    assert normalised_name(name) == normalised


# --- small parsers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["0", "ls", "-l"], BpshOptions("/m.sock", "0", ("ls", "-l"))),
        (["-a", "uptime"], BpshOptions("/m.sock", "all", ("uptime",))),
        (
            ["--socket", "/x.sock", "-n", "1,2", "sh", "-c", "exit 3"],
            BpshOptions("/x.sock", "1,2", ("sh", "-c", "exit 3"), (), True),
        ),
        (
            ["--cache=/opt/lib", "0", "prog", "--cache", "y"],
            BpshOptions("/m.sock", "0", ("prog", "--cache", "y"), ("/opt/lib",)),
        ),
        (["-s", "-a", "df"], BpshOptions("/m.sock", "all", ("df",), sequential=True)),
        (["-apn", "df", "-h"], BpshOptions("/m.sock", "all", ("df", "-h"), no_stdin=True, prefix=True)),
        (["-d", "-p", "0-3", "df"], BpshOptions("/m.sock", "0-3", ("df",), prefix=True, sequential=True, divider=True)),
    ],
)
def test_bpsh_arguments(argv, expected):
    assert parse_args(argv, {"BEOSERV_SOCKET": "/m.sock"}) == expected


def test_bpsh_default_socket():
    assert parse_args(["0", "true"], {}).socket == "/run/beoserv/bpsh.sock"


def test_bpsh_request_round_trips_with_any_bytes_and_the_kernels_user():
    options = parse_args(["--cache", "/opt/x", "-n", "2-3", "printf", "%s\\n", "caf\udcc3"], {})
    environ = {b"PATH": b"/usr/bin", b"ODD": b"a=b\xff"}
    request, letters = decode_request(encode_request(options, b"/home/u", environ), uid=1000, gid=100)
    assert (request.nodes, request.argv, request.cache, request.cwd) == (
        "2-3",
        ("printf", "%s\\n", "caf\udcc3"),
        ("/opt/x",),
        "/home/u",
    )
    assert request.env == {"PATH": "/usr/bin", "ODD": "a=b\udcff"} and (request.uid, request.gid) == (1000, 100)
    assert letters == "n" and not request.stdin


def test_bpsh_node_selection_and_output_options_round_trip():
    argv = ["-b", "-x", "n3", "--exclude=@gpu", "--fanout", "8", "-t", "2.5", "n[0-99,120]", "hostname"]
    options = parse_args(argv, {})
    request, letters = decode_request(encode_request(options, b"/", {}), uid=0, gid=0)
    assert (request.nodes, request.exclude, request.fanout, request.timeout) == ("n[0-99,120]", "n3,@gpu", 8, 2.5)
    assert letters == "b" and request.stdin


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GET / HTTP/1.1",
        b"bpsh1\x000\x00/\x00\x005\x00ls",
        b"bpsh1\x000\x00/\x00\x00x\x00a\x000",
        b"bpsh1\x000\x00/\x00;q=1\x001\x00ls\x000",  # an option this beoserv does not know
        b"bpsh1\x000\x00/\x00;t=nan\x001\x00ls\x000",
        b"bpsh1\x000\x00/\x00;f=-1\x001\x00ls\x000",
    ],
)
def test_bad_bpsh_requests_are_refused(data):
    with pytest.raises(RequestError):
        decode_request(data, 0, 0)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "no node"),
        (["0"], "no command"),
        (["-Z", "0", "a"], "unknown option"),
        (["-nZ", "0", "a"], "unknown option"),
        (["-x"], "-x needs a value"),
        (["-b", "-s", "0", "a"], "not with -p, -s or -d"),
        (["--fanout", "0", "0", "a"], "--fanout .0.: give a number of nodes"),
        (["-t", "-1", "0", "a"], "-t .-1.: give the seconds"),
    ],
)
def test_bpsh_argument_errors(argv, message):
    with pytest.raises(BpshUsageError, match=message):
        parse_args(argv, {})


def test_bpsh_help_goes_to_stdout_with_status_0():
    for option in ("-h", "--help"):
        shown = subprocess.run(
            [sys.executable, "-IS", BPSH_SCRIPT, option, "0", "true"], capture_output=True, text=True
        )
        assert (shown.returncode, shown.stderr) == (0, "") and shown.stdout.startswith("usage: bpsh ")


def test_websocket_mask_round_trips():
    data = os.urandom(1001)
    assert mask(mask(data, b"abcd"), b"abcd") == data and mask(b"", b"abcd") == b""


def test_job_frames_round_trip():
    manifest = p.JobManifest(("a",), "/a", {"X": "1"}, "/", 0, 0, (p.JobFile("/a", 0o755, "ab" * 32, 3),))
    for message in (p.JobStart(1, manifest), p.JobExit(2, 130, 2, node=0), p.JobSignal(0, 2)):
        assert p.decode_frame(p.encode_frame(message)) == message
    with pytest.raises(p.ProtocolError):
        p.decode_frame('{"type": "Nope", "body": {}}')


def test_line_prefixes_keep_lines_whole_per_node_and_stream():
    from beoboot.master.bpsh.localjobs import LinePrefixer

    lines = LinePrefixer()
    assert lines.lines(3, 1, b"hel") == b""
    assert lines.lines(12, 1, b"a\nb") == b"12: a\n"
    assert lines.lines(3, 2, b"err\n") == b"3: err\n"
    assert lines.lines(3, 1, b"lo\nwor") == b"3: hello\n"
    assert (lines.rest(3, 1), lines.rest(12, 1), lines.rest(3, 2)) == (b"3: wor\n", b"12: b\n", b"")


def test_io_header_size_matches_its_format():
    import struct

    assert struct.calcsize(p.IO_HEADER) == p.IO_HEADER_SIZE


def test_the_script_an_interpreter_is_given_comes_along(tmp_path):
    """`sh job.sh`, `perl x.pl` and `nice python3 prog.py`: the program is an argument, not the command."""
    (tmp_path / "job.sh").write_text("echo hi\n")
    (tmp_path / "x.pl").write_text("print 1;\n")
    (tmp_path / "prog.py").write_text("import helper\n")
    (tmp_path / "helper.py").write_text("")
    builder = ManifestBuilder(ObjectStore())
    for argv, expected in [
        (("sh", "-e", "job.sh"), {"job.sh"}),
        (("perl", "-w", "x.pl"), {"x.pl"}),
        (("nice", "-n", "5", "python3", "prog.py"), {"prog.py", "helper.py"}),
        (("perl", "-e", "print 1"), set()),
        (("sh", "-c", "true"), set()),
    ]:
        request = p.JobRequest("0", argv, {"PATH": "/usr/bin:/bin"}, str(tmp_path), 0, 0)
        paths = {f.path for f in builder.build(request).files}
        assert {os.path.basename(path) for path in paths if path.startswith(f"{tmp_path}/")} == expected, argv
        assert builder.build_cached(request) is not None  # known now: no file read for the next job


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs the master's python3")
def test_a_python_scripts_imports_come_along_and_a_new_one_is_seen(tmp_path):
    """A '#!/usr/bin/python3' script importing a package from PYTHONPATH (a tree with a data file and an
    extension module's libraries), through the real interpreter's search path."""
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "pkg/__init__.py").write_text("from . import part\n")
    (lib / "pkg/part.py").write_text("")
    (lib / "pkg/table.csv").write_text("1,2\n")
    script = tmp_path / "tool"
    script.write_text("#!/usr/bin/python3\nimport json, pkg\n")
    script.chmod(0o755)
    builder = ManifestBuilder(ObjectStore())
    request = p.JobRequest("0", (str(script),), {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib)}, "/", 0, 0)
    paths = {f.path for f in builder.build(request).files}
    assert {str(lib / "pkg/__init__.py"), str(lib / "pkg/part.py"), str(lib / "pkg/table.csv")} <= paths
    assert not any("/json/" in path for path in paths)  # the stdlib comes in its zip
    assert builder.build_cached(request) is not None
    script.write_text("#!/usr/bin/python3\nimport json, pkg, more\n")
    (lib / "more.py").write_text("")
    assert builder.build_cached(request) is None  # the script's directory changed: read again
    assert str(lib / "more.py") in {f.path for f in builder.build(request).files}


@pytest.mark.parametrize(
    "program, data", [("/usr/bin/file", "/usr/share/misc/magic.mgc"), ("/usr/bin/lspci", "/usr/share/misc/pci.ids")]
)
def test_a_library_brings_the_data_file_it_reads(program, data):
    """build.py setup installs both (file, pciutils): a missing one fails here rather than skipping."""
    paths = {
        f.path
        for f in ManifestBuilder(ObjectStore())
        .build(p.JobRequest("0", (program,), {"PATH": "/usr/bin:/bin"}, "/", 0, 0))
        .files
    }
    assert data in paths and os.path.realpath(data) in paths


def test_an_env_bash_scripts_commands_come_along(tmp_path):
    """'#!/usr/bin/env bash' is as much a shell script as '#!/bin/sh'."""
    script = tmp_path / "job"
    script.write_text("#!/usr/bin/env bash\nset -e\nsort -u /etc/hostname | md5sum\n")
    script.chmod(0o755)
    request = p.JobRequest("0", (str(script),), {"PATH": "/usr/bin:/bin"}, "/", 0, 0)
    paths = {f.path for f in ManifestBuilder(ObjectStore()).build(request).files}
    assert {os.path.realpath("/usr/bin/sort"), os.path.realpath("/usr/bin/md5sum")} <= paths


def test_a_module_the_user_cannot_open_is_left_out_not_fatal(tmp_path):
    """beoserv searches as root; a module in a directory the job's user cannot search is not theirs."""
    import tempfile

    top = tempfile.mkdtemp(dir="/tmp")
    try:
        os.chmod(top, 0o755)
        closed = os.path.join(top, "closed")
        os.mkdir(closed, 0o700)
        with open(os.path.join(closed, "secretmod.py"), "w") as f:
            f.write("")
        request = p.JobRequest(
            "0",
            ("/usr/bin/python3", "-c", "import secretmod"),
            {"PATH": "/usr/bin:/bin", "PYTHONPATH": closed},
            "/",
            65534,
            65534,
        )
        paths = {f.path for f in ManifestBuilder(ObjectStore()).build(request).files}
        assert os.path.realpath("/usr/bin/python3") in paths and not any("secretmod" in path for path in paths)
        as_root = ManifestBuilder(ObjectStore()).build(replace(request, uid=0, gid=0)).files
        assert os.path.join(closed, "secretmod.py") in {f.path for f in as_root}
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root, as the node's agent is")
def test_a_manifest_placed_again_unchanged_is_not_walked_but_any_change_is_placed_again(server, env_root, monkeypatch):
    """A cached job's manifest, placed whole in root's own directories, is checked with one lstat per path
    the next time, not walked; a path a root job removed or replaced since is placed again, and a manifest
    with a path in a directory a user may write is walked every time."""
    files = [server.add("/usr/bin/prog", b"program"), p.JobFile("/lib", 0o777, link="usr/lib")]
    cache = cache_for(env_root, server)
    cache.ensure(files)
    cache.materialise(files)
    walks = []
    real_directories = cache._directories
    monkeypatch.setattr(cache, "_directories", lambda: walks.append(1) or real_directories())
    cache.materialise(list(files))  # a new manifest object of the same files, as each JobStart decodes
    assert walks == []
    (env_root / "usr/bin/prog").unlink()  # a root job
    cache.materialise(files)
    assert walks == [1] and (env_root / "usr/bin/prog").read_bytes() == b"program"
    (env_root / "usr/bin/other").write_bytes(b"other")
    os.rename(env_root / "usr/bin/other", env_root / "usr/bin/prog")  # a root job's install over it
    cache.materialise(files)
    assert len(walks) == 2 and (env_root / "usr/bin/prog").read_bytes() == b"program"
    os.chmod(env_root / "usr/bin/prog", 0o555)  # any change moves its ctime: walked again
    cache.materialise(files)
    assert len(walks) == 3
    cache.materialise(files)
    assert len(walks) == 3
    home = a_users_home(env_root)
    tool = replace(server.add("/home/u/bin/tool", b"t"), uid=1000, gid=1000)
    cache.ensure([tool])
    for _ in range(2):
        cache.materialise([tool])
    assert len(walks) == 5 and (home / "bin/tool").read_bytes() == b"t"
