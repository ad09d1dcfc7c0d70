"""The Python standard library for jobs: the master's stdlib as one zip, so `bpsh 0 python3 prog.py` can
import json, sqlite3 or asyncio on a node that holds only what jobs brought.

Listing the stdlib file by file would put some 600 modules in every Python job's manifest. Python already
looks for its stdlib in a zip beside its library directory before the directory itself
(`PREFIX/lib/python311.zip` is always on sys.path, Modules/getpath.py), so the job gets one object at that
path: the master's own compiled modules (`__pycache__/*.cpython-311.pyc` where they match their source, as
Debian installs them), or the source where no such .pyc does; zipimport runs a .pyc with no source beside
it as it is. The zip is derived from the master's files, so it changes with them: a job must never get a
zip older than the master's sources, and checking 600 files on every job would cost milliseconds, so
the stdlib's directories are watched with inotify instead (SourceWatch): a cached Python job costs one
read() that finds nothing, and any change makes the next job build the zip again (0.2 s).

Extension modules cannot be imported from a zip: lib-dynload comes as files, with their ELF closures.
Test suites, IDLE, Tk and the other parts a batch job never imports stay out (STDLIB_SKIP).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import struct
import tempfile
import threading
from dataclasses import dataclass

from beoboot.master.manifest import budget as jobbudget
from beoboot.master.manifest.sourcewatch import SourceWatch
from beoboot.regularfile import read_regular
from beoboot.resolve.pyruntime import write_zip
from beoboot.resolve.sysroot import Sysroot

# directories of the stdlib no job needs: tests, GUI, the installers of pip and of old 2to3
STDLIB_SKIP = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "lib-dynload",
    }
)
MAX_MEMBER = 16 << 20  # a larger module (the largest of CPython's is under 1 MiB) is left out of the zip


@dataclass(frozen=True)
class StdlibZip:
    node_path: str  # where the job's interpreter looks for it: PREFIX/lib/python3XY.zip
    host_path: str  # the zip, built on the master
    lib_dynload: str  # the extension modules' directory (sysroot path), brought as files
    watch: SourceWatch  # says when a source changed: the zip is built again then


def python_version(real_program: str) -> str | None:
    """'3.11' for .../python3.11, the real file behind python3 and python links."""
    found = re.fullmatch(r"python(3\.\d+)", posixpath.basename(real_program))
    return found.group(1) if found else None


class StdlibZips:
    """Builds each interpreter's stdlib zip once per state of its sources, in a directory of its own that
    lives as long as this object (beoserv's process): rebuilding one takes a fraction of a second."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._lock = threading.Lock()
        self._current: dict[str, StdlibZip] = {}  # stdlib directory -> its zip, while its watch sees no change

    def for_interpreter(self, sysroot: Sysroot, real_program: str) -> StdlibZip | None:
        """The zip for the Python at `real_program` (a sysroot path, links resolved), or None when it is no
        CPython 3 with a stdlib directory beside it, or already has a zip of its own (an ordinary file then)."""
        version = python_version(real_program)
        if version is None:
            return None
        prefix_lib = posixpath.join(posixpath.dirname(posixpath.dirname(real_program)), "lib")
        lib = posixpath.join(prefix_lib, f"python{version}")
        node_path = posixpath.join(prefix_lib, f"python{version.replace('.', '')}.zip")
        host_lib = str(sysroot.host(lib))
        if not os.path.isfile(os.path.join(host_lib, "os.py")) or os.path.lexists(sysroot.host(node_path)):
            return None
        with self._lock:
            known = self._current.get(host_lib)
        if known is not None and known.watch.unchanged():
            return known
        if known is not None:
            known.watch.close()
        watch = SourceWatch()  # before the first read: a change while the zip is made is seen
        data = write_zip(_stdlib_members(host_lib, version, watch))
        with self._lock:
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="beoserv-python-stdlib-")
            host_path = os.path.join(self._dir.name, f"python{version}-{hashlib.sha256(data).hexdigest()[:20]}.zip")
            if not os.path.exists(host_path):  # named by content: a zip once served is never rewritten
                with open(host_path + ".tmp", "wb") as f:
                    f.write(data)
                os.rename(host_path + ".tmp", host_path)
            built = StdlibZip(node_path, host_path, posixpath.join(lib, "lib-dynload"), watch)
            self._current[host_lib] = built
        return built


def _stdlib_members(lib: str, version: str, watch: SourceWatch) -> dict[str, bytes]:
    """Zip members: module path -> .pyc or .py bytes. Every directory walked is added to `watch` before its
    files are read."""
    tag = f".cpython-{version.replace('.', '')}.pyc"
    members: dict[str, bytes] = {}
    for top, dirs, files in os.walk(lib):
        dirs[:] = sorted(d for d in dirs if d not in STDLIB_SKIP and not d.startswith("config-"))
        jobbudget.check()
        watch.add(top)
        watch.add(os.path.join(top, "__pycache__"))  # a .pyc rewritten: what goes into the zip changes
        relative = os.path.relpath(top, lib)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            source = os.path.join(top, name)
            st = os.stat(source)
            member = posixpath.normpath(posixpath.join(relative, name))
            compiled = _matching_pyc(os.path.join(top, "__pycache__", name[:-3] + tag), st)
            if compiled is not None:
                members[member + "c"] = compiled
            else:
                try:  # a user's own Python tree may hold a FIFO or a device under a module's name
                    members[member] = read_regular(source, MAX_MEMBER)
                except OSError:
                    continue
    return members


def _matching_pyc(path: str, source: os.stat_result) -> bytes | None:
    """The .pyc at `path` if it was compiled from this source (PEP 552 timestamp header: flags 0, the
    source's mtime and size), else None: a stale .pyc must not run in place of the master's source."""
    try:
        data = read_regular(path, MAX_MEMBER)
    except OSError:
        return None
    if len(data) < 16:
        return None
    flags, mtime, size = struct.unpack("<III", data[4:16])
    if flags != 0 or mtime != int(source.st_mtime) & 0xFFFFFFFF or size != source.st_size & 0xFFFFFFFF:
        return None
    return data
