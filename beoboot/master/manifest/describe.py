"""What a job needs on a node: the master's exact files for COMMAND, as an agent.protocol.JobManifest.

COMMAND is found on the request's PATH (on the master: the master's install is the reference). The files
are the program, its ELF closure as glibc's ld.so would load it (beoboot.resolve.ldso, the builder's resolver), the
`#!` interpreter of a script with that interpreter's closure (scripts may chain), run-time files a known
interpreter cannot start without (RUNTIME_RULES; for Python its whole stdlib, as one zip built from the
master's files: beoboot.master.manifest.python; for Perl its essential modules), `--cache` extras (a file or a whole
directory; ELF files in them bring their closures too), the command a wrapper runs (nice, timeout, env:
WRAPPERS), the locale, time zone and terminfo the job's environment names (beoboot.master.manifest.environ), the
script an interpreter is given and the modules a Python or Perl program uses (beoboot.master.manifest.imports,
beoboot.master.manifest.perl), what libraries open at run time (beoboot.master.manifest.runtimefiles), and
for an MPI launcher's daemon the application its launcher runs (beoboot.master.manifest.launchers). Each
entry carries the master's owner, group, mode and ACL, and the job's user must be able to read it on the
master (beoboot.master.manifest.access).
Every symbolic link met on the way is listed as a link, with its owner, so the node's tree has the master's
shape (/lib -> usr/lib), files sit at their real paths, and a user's link is the user's on the node too.

Closures are cached per program and re-checked by stat key on every job, with the directories the library
search looked in (a new library there may come first now); trees (run-time directories, --cache, locales)
are cached per path and watched with inotify; hashes come from the ObjectStore's cache. A cached job
therefore costs a few stat() calls per file of its closure and none per file of its trees, not a read.
"""

from __future__ import annotations

import glob
import os
import posixpath
import re
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent import protocol as p
from beoboot.errors import BeobootError
from beoboot.master.manifest import budget as jobbudget
from beoboot.master.manifest import launchers
from beoboot.master.manifest.access import AccessDenied, UserView, acl_of, guard, guard_contents, readable
from beoboot.master.manifest.environ import environment_paths
from beoboot.master.manifest.imports import PythonImports, python_start
from beoboot.master.manifest.perl import PerlModules, perl_start
from beoboot.master.manifest.python import StdlibZips, python_version
from beoboot.master.manifest.runtimefiles import runtime_files
from beoboot.master.manifest.shell import MAX_SCRIPT, SHELLS, command_words, shell_command_text, shell_script
from beoboot.master.manifest.sourcecache import PerFile, RecentlyUsed
from beoboot.master.manifest.sourcewatch import SourceWatch
from beoboot.master.manifest.users import JobUsers
from beoboot.master.objects import Digest, ObjectStore, StatKey, key_of, stat_key
from beoboot.regularfile import NotRegularFile, open_regular
from beoboot.resolve.elf import ELF_MAGIC
from beoboot.resolve.ldso import LibraryResolver
from beoboot.resolve.sysroot import Sysroot

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
MAX_SHEBANG_DEPTH = 4  # a script whose interpreter is a script... as the kernel allows (BINPRM_MAX_RECURSION)
MAX_EXTRA_FILES = 20000
# Described trees (--cache, run-time directories, locales) and program closures kept: a busy master uses far
# fewer, and each tree holds up to MAX_EXTRA_FILES entries and an inotify watch per directory
MAX_DESCRIBED_TREES = 256
MAX_DESCRIBED_PROGRAMS = 1024
# Shell scripts' texts kept (each up to MAX_SCRIPT), and shell texts' command words, in characters of text
# plus ENTRY_COST per entry (its key and stat key); '#!' lines of commands kept, in entries
MAX_SCRIPT_TEXT = 16 << 20
MAX_SHELL_TEXT = 16 << 20
ENTRY_COST = 256
MAX_INTERPRETERS = 4096


class JobError(BeobootError):
    """A job that cannot be described: command not found, unreadable file, bad --cache path."""


def parse_shebang(head: bytes) -> tuple[str, ...] | None:
    """b'#!/bin/sh -e\\n...' -> ('/bin/sh', '-e'); None when there is no '#!' line. As the kernel does
    (binfmt_script): everything after the first word is one argument."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip().decode(errors="replace")
    if not line:
        return None
    interpreter, _, argument = line.partition(" ")
    argument = argument.strip()
    return (interpreter, argument) if argument else (interpreter,)


def python_runtime(real_program: str) -> list[str]:
    """Python 3 needs its `encodings` package to start (the codec of stdio), os.py as the landmark of its
    prefix and lib-dynload as the landmark of its exec prefix (Modules/getpath.py)."""
    version = python_version(real_program)
    if not version:
        return []
    lib = posixpath.join(posixpath.dirname(posixpath.dirname(real_program)), "lib", f"python{version}")
    return [f"{lib}/encodings", f"{lib}/os.py", f"{lib}/lib-dynload/"]


PERL = re.compile(r"perl(5[\d.]*)?")


def perl_runtime(real_program: str) -> list[str]:
    """Perl's essential modules, as Debian's perl-base installs them (strict, warnings, POSIX, Carp,
    Exporter, Getopt::Long, File::*, IO::*, List::Util, Socket, ...): a Perl script can rarely start
    without some of them, and unlike Python's, Perl cannot read its modules from one zip. Left out, for
    --cache: perl-base's unicore/ (537 of its 611 files, read only for \\N{NAME} and the rarer \\p{}
    properties; the common ones are built into perl) and the rest of the core library (perl-modules:
    Data::Dumper, ...), ten times larger. Each would add its files to every Perl job's manifest."""
    if not PERL.fullmatch(posixpath.basename(real_program)):
        return []
    needed = ["/etc/perl"]
    for base in sorted(glob.glob("/usr/lib/*/perl-base")):
        needed += [base + "/", *(posixpath.join(base, name) for name in sorted(os.listdir(base)) if name != "unicore")]
    return needed


# interpreter or library -> the run-time files it needs beyond its ELF closure (a trailing '/' means: the
# directory only)
RUNTIME_RULES: tuple[Callable[[str], list[str]], ...] = (python_runtime, perl_runtime, runtime_files)


# Commands that run another command named in their arguments, which must then come along too
WRAPPERS = frozenset(
    {
        "chrt",
        "env",
        "flock",
        "ionice",
        "nice",
        "nohup",
        "numactl",
        "prlimit",
        "setsid",
        "stdbuf",
        "strace",
        "taskset",
        "time",
        "timeout",
        "xargs",
    }
)


def wrapped_commands(argv: tuple[str, ...], path_env: str, cwd: str) -> list[str]:
    """What a wrapper runs (`nice -n 5 prog`, `timeout 60 ./prog`, `env A=1 prog`), as found on the PATH."""
    return [path for path, _ in unwrapped(argv, path_env, cwd)]


def unwrapped(argv: tuple[str, ...], path_env: str, cwd: str) -> list[tuple[str, tuple[str, ...]]]:
    """(path, argv) of each command a wrapper runs: the first argument that is no option, no NAME=value and
    names an executable on the PATH, as the wrapper will find it; then the same again if that is a wrapper
    too (`nice timeout 9 prog`)."""
    found: list[tuple[str, tuple[str, ...]]] = []
    args = list(argv)
    while args and posixpath.basename(args[0]) in WRAPPERS:
        for index, arg in enumerate(args[1:], 1):
            if arg.startswith("-") or "=" in arg:
                continue
            try:
                found.append((find_command(arg, path_env, cwd), tuple(args[index:])))
            except JobError:
                continue  # an option's value (nice -n 5, timeout 60)
            args = args[index:]
            break
        else:
            break
    return found


def find_command(command: str, path_env: str, cwd: str) -> str:
    """COMMAND as execvp would find it on the master: a name with a '/' is a path, else searched on PATH."""
    if "/" in command:
        path = posixpath.normpath(posixpath.join(cwd, command))
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise JobError(f"{command}: not an executable file on the master ({path})")
        if not os.path.isfile(path):  # a FIFO, socket or device: reading its '#!' line would wait for ever
            raise JobError(f"{command}: not a regular file on the master ({path})", hint="name a program")
        return path
    for directory in (path_env or DEFAULT_PATH).split(":"):
        candidate = posixpath.join(directory or cwd, command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return posixpath.normpath(candidate)
    raise JobError(f"{command}: command not found on the master's PATH", hint=f"PATH is {path_env or DEFAULT_PATH}")


def cache_path(name: str, path_env: str, cwd: str) -> str:
    """A --cache argument as a path from the working directory. A bare name that is no file there but a
    command on PATH is refused with the path to give: --cache brings files, and `--cache hostname` for a
    script's commands is an easy slip."""
    path = posixpath.normpath(posixpath.join(cwd, name))
    if "/" not in name and not os.path.lexists(path):
        try:
            command = find_command(name, path_env, cwd)
        except JobError:
            return path  # extra() says it does not exist
        raise JobError(
            f"--cache {name}: no such file or directory in {cwd} on the master",
            hint=f"--cache takes paths; to bring the command {name}, name its path: --cache {command}",
        )
    return path


# Besides the directories the search looked in, what decides which directories those are
LD_SO_CONF_PATHS = ("/etc/ld.so.conf", "/etc/ld.so.conf.d")


@dataclass(frozen=True)
class _Closure:
    paths: tuple[str, ...]  # every file and link the program needs (as found, before resolving links)
    keys: tuple[tuple[str, StatKey], ...]  # (real path, stat key) of every regular file, to re-check
    # (host path, lstat key) of every directory the library search looked in, and of ld.so.conf: a library
    # installed where the search looks before the one found (/usr/local/lib) changes its directory's
    # mtime, and the closure is computed again
    searched: tuple[tuple[str, StatKey | None], ...] = ()
    # (path on the node, the master's file that holds it) for files made from the master's files rather
    # than found at the same path: a Python's stdlib zip
    derived: tuple[tuple[str, str], ...] = ()
    watches: tuple[SourceWatch, ...] = ()  # of the derived files' sources
    # the PATH a '#!/usr/bin/env NAME' line was resolved with (None: no such line): another PATH may find
    # another NAME
    path_env: str | None = None
    trees: tuple[str, ...] = ()  # run-time directories (RUNTIME_RULES), described and watched on their own

    def current(self, path_env: str | None = None) -> bool:
        return (
            (self.path_env is None or self.path_env == path_env)
            and all(key_of(real) == key for real, key in self.keys)
            and all(_lkey_of(path) == key for path, key in self.searched)
            and all(watch.unchanged() for watch in self.watches)
        )


@dataclass(frozen=True)
class _Described:
    """A closure's JobFiles, kept for as long as no file and no link on the way changed."""

    files: tuple[p.JobFile, ...]
    keys: tuple[tuple[str, StatKey | None], ...]  # (path, lstat key) of every link met and file described
    watches: tuple[SourceWatch, ...] = ()
    path_env: str | None = None  # as _Closure's
    trees: tuple[str, ...] = ()  # as _Closure's

    def current(self, path_env: str | None = None) -> bool:
        return (
            (self.path_env is None or self.path_env == path_env)
            and all(_lkey_of(path) == key for path, key in self.keys)
            and all(w.unchanged() for w in self.watches)
        )


class ManifestBuilder:
    def __init__(self, store: ObjectStore, root: str = "/", budget: float = jobbudget.DESCRIBE_SECONDS) -> None:
        self.store = store
        self.root = root
        self.budget = budget  # seconds one build() may take (beoboot.master.manifest.budget)
        self._closures: RecentlyUsed[str, _Closure] = RecentlyUsed(MAX_DESCRIBED_PROGRAMS)
        # program -> its closure, described (its watches are the StdlibZips', which close them themselves)
        self._described: RecentlyUsed[str, _Described] = RecentlyUsed(MAX_DESCRIBED_PROGRAMS)
        # --cache path -> its tree (and ELF closures), described; its watches are its own
        self._extras: RecentlyUsed[str, _Described] = RecentlyUsed(MAX_DESCRIBED_TREES, _close_watches)
        self.stdlib_zips = StdlibZips()
        self.users = JobUsers()
        # (script, whether its '#!' must name a shell) -> its text
        self._scripts: PerFile[str] = PerFile(_read_script, MAX_SCRIPT_TEXT, weigh=lambda text: len(text) + ENTRY_COST)
        # shell text -> its command words
        self._words: RecentlyUsed[str, list[str]] = RecentlyUsed(
            MAX_SHELL_TEXT, weigh=lambda text, words: len(text) + ENTRY_COST
        )
        self.imports = PythonImports()
        self.perl = PerlModules()
        # (command, PATH) -> (interpreter as named, its real file, '#!' arguments)
        self._interpreters: PerFile[tuple[str, str, tuple[str, ...]]] = PerFile(
            lambda command, key, path_env: _interpreter_of(command, path_env), MAX_INTERPRETERS
        )
        self._lock = threading.Lock()

    # --- public -------------------------------------------------------------------------------------------

    def build(self, request: p.JobRequest) -> p.JobManifest:
        if not request.argv:
            raise JobError("no command given", hint="bpsh NODE COMMAND [ARGS...]")
        with jobbudget.budget(request.argv, self.budget):
            return self._build(request)

    def _build(self, request: p.JobRequest) -> p.JobManifest:
        path_env = request.env.get("PATH", DEFAULT_PATH)
        (executable, *named), inners, launched = self._programs(request, path_env)
        programs = [self._described_program(executable, path_env, request)]
        for program in named:
            try:
                programs.append(self._described_program(program, path_env, request))
            except JobError:
                continue  # a program the job may never run (a shell word): it fails on the node if it does
        inputs = [path for inner in inners for path in self._job_inputs(request, path_env, inner) or []]
        extras = [path for program in programs for path in program.trees] + self._extra_paths(request, path_env)
        extras += launched
        described: list[str] = []  # trees this request described afresh
        try:
            trees = [self.described_extra(path, user=request, described=described) for path in [*extras, *inputs]]
            return _manifest(
                request, executable, _merge(*(program.files for program in programs), *trees), self.users, self.root
            )
        except BeobootError:
            # a refused request keeps nothing: else each refused job could leave another tree, and its
            # watches, behind (a user's links to one big tree, each a new --cache path)
            with self._lock:
                for path in described:
                    self._extras.drop(path)
            raise

    def build_cached(self, request: p.JobRequest) -> p.JobManifest | None:
        """build(), when that costs only lstat() calls (no ELF parsing, no hashing), so beoserv may run it on
        its event loop; None when it would cost more. JobError as build()."""
        if not request.argv:
            return None
        path_env = request.env.get("PATH", DEFAULT_PATH)
        (executable, *named), inners, launched = self._programs(request, path_env)
        with self._lock:
            programs = [self._described.get(program) for program in (executable, *named)]
        current = [program for program in programs if program is not None and program.current(path_env)]
        if len(current) != len(programs):
            return None
        inputs: list[str] = []
        for inner in inners:
            found = self._job_inputs(request, path_env, inner, cached_only=True)
            if found is None:
                return None
            inputs += found
        paths = [path for program in current for path in program.trees] + self._extra_paths(request, path_env)
        paths += inputs + launched
        with self._lock:
            extras = [self._extras.get(path) for path in paths]
        fresh = [extra for extra in extras if extra is not None and extra.current()]
        if len(fresh) != len(extras):
            return None
        files = _merge(*(program.files for program in current), *(extra.files for extra in fresh))
        return _manifest(request, executable, files, self.users, self.root)

    def _programs(
        self, request: p.JobRequest, path_env: str
    ) -> tuple[list[str], list[tuple[str, tuple[str, ...]]], list[str]]:
        """The command, and the commands it runs by name: a wrapper's (nice, timeout, env, ...), those
        of a shell's text (sh -c TEXT, or a shell script: beoboot.master.manifest.shell), as found on the job's
        PATH, and an MPI daemon's application (beoboot.master.manifest.launchers); the commands whose
        arguments may name what they read, each with its argv (`prog ARGS` of `nice timeout 9 prog ARGS`);
        and files that come as files only (the remote shell agent an MPI daemon checks for)."""
        command = find_command(request.argv[0], path_env, request.cwd)
        wrapped = unwrapped(request.argv, path_env, request.cwd)
        programs = [command, *(path for path, _ in wrapped)]
        inner = wrapped[-1] if wrapped else (command, request.argv)
        inners = [inner]
        text = shell_command_text(inner[1], lambda path: self._script_text(posixpath.join(request.cwd, path)))
        for name in self._command_words(text or self._script_text(inner[0], shebang=True)):
            try:
                programs.append(find_command(name, path_env, request.cwd))
            except JobError:
                continue  # a builtin, a function, a command the master has not either
        launched: list[str] = []
        for program in list(programs):
            if (launcher := launchers.launcher_for(program)) is None or request.client_pid <= 0:
                continue
            process = launchers.find_launcher(request.client_pid, request.uid, launcher)
            if process is not None:

                def program_path(word: str, process: launchers.LauncherProcess = process) -> str | None:
                    try:
                        return find_command(word, process.path_env or path_env, process.cwd)
                    except JobError:
                        return None  # an option's value, an argument: no program

                for found, argv in launchers.applications(process, program_path):
                    programs.append(found)
                    inners.append((found, argv))
            if agent := launchers.agent_named(text, request.env, launcher):
                try:
                    launched.append(find_command(agent, path_env, request.cwd))
                except JobError:
                    pass  # the daemon says so itself, naming it
        return list(dict.fromkeys(programs)), inners, launched

    def _job_inputs(
        self, request: p.JobRequest, path_env: str, inner: tuple[str, tuple[str, ...]], *, cached_only: bool = False
    ) -> list[str] | None:
        """What the innermost command reads as its program: the script an interpreter is given (`sh job.sh`,
        `perl x.pl`, `python3 prog.py`), and the modules a Python or Perl program uses (beoboot.master.manifest.imports,
        beoboot.master.manifest.perl). `cached_only`: None unless that is known without reading any file."""
        command, argv = inner
        interpreter, real, shebang_args = self._interpreter(command, path_env)
        # a script run as a command: its interpreter gets the '#!' arguments, then the script's path
        args = (*shebang_args, command, *argv[1:]) if interpreter != command else argv[1:]
        found: Iterable[str] | None
        if python_version(real):
            found = self.imports.paths(
                python_start(interpreter, real, args, request.cwd), request.env, cached_only=cached_only
            )
        elif PERL.fullmatch(posixpath.basename(real)):
            found = self.perl.paths(perl_start(real, args, request.cwd), request.env, cached_only=cached_only)
        else:
            script = shell_script(argv)
            path = posixpath.normpath(posixpath.join(request.cwd, script)) if script else ""
            return [path] if path and os.path.isfile(path) else []
        if found is None:
            return None
        # the search ran as root: a module the user's own interpreter could not open is not theirs to
        # bring (it would fail the job), as their interpreter on the master would pass it by
        return readable(found, request.uid, request.gid, request.groups, self.root)

    def _interpreter(self, command: str, path_env: str) -> tuple[str, str, tuple[str, ...]]:
        """(interpreter as named, its real file, '#!' arguments) of `command`: itself for a program, the
        '#!' interpreter for a script; cached per stat key of the command."""
        return self._interpreters(command, path_env)

    def _script_text(self, path: str, *, shebang: bool = False) -> str:
        """A shell script's text ("" for anything else, an unreadable or too long file), from cache while
        the file is unchanged: one stat() per job. `shebang`: only a script whose '#!' names a shell (a
        command run directly), not any file a shell is given."""
        return self._scripts(path, shebang)

    def _command_words(self, text: str) -> list[str]:
        with self._lock:
            words = self._words.get(text)
        if words is None:
            words = command_words(text)
            with self._lock:
                self._words.put(text, words)
        return words

    def _extra_paths(self, request: p.JobRequest, path_env: str) -> list[str]:
        """--cache paths, and what the job's environment makes it read: its locale, time zone, terminfo."""
        return [
            *(cache_path(extra, path_env, request.cwd) for extra in request.cache),
            *environment_paths(request.env, self.root),
        ]

    def _described_program(self, program: str, path_env: str, user: p.JobRequest | None = None) -> _Described:
        """describe(closure(program)), from cache while every file and link it met is unchanged (lstat):
        a cached job's manifest then costs one lstat per path instead of a walk of every path. Its
        run-time trees are described on their own (described_extra), watched rather than checked per file."""
        with self._lock:
            cached = self._described.get(program)
        if cached is not None and cached.current(path_env):
            return cached
        closure = self._closure(program, path_env)
        files = self.describe(closure.paths, dict(closure.derived), user)
        watched = sorted({program, *(f.path for f in files)})
        described = _Described(
            files,
            tuple((path, _lkey_of(path)) for path in watched) + closure.searched,
            closure.watches,
            closure.path_env,
            closure.trees,
        )
        with self._lock:
            self._described.put(program, described)
        return described

    def described_extra(
        self, path: str, *, user: p.JobRequest | None = None, described: list[str] | None = None
    ) -> tuple[p.JobFile, ...]:
        """describe(extra(path)), from cache while nothing in the tree changed (inotify on its directories,
        so asking costs no walk), no file it brings from outside the tree changed (lstat: an ELF program's
        libraries) and no library search of its programs would find another. `user`: as describe()'s;
        `described`: where to note `path` when it was described afresh rather than found in the cache."""
        with self._lock:
            cached = self._extras.get(path)
        if cached is not None and cached.current():
            return cached.files
        watch, listing = SourceWatch(), self._tree(path)
        directories = {name.rstrip("/") for name in listing if name.endswith("/")}
        for directory in sorted(directories):
            watch.add(directory)
        if self._tree(path) != listing:  # a file came or went before its directory was watched
            watch.close()  # never current: the next job walks again
        try:
            paths = self.extra(path)
            files = self.describe(paths, user=user)
        except BaseException:
            watch.close()  # kept by no cache entry: nothing else would ever release its directories
            raise
        outside = sorted({path, *(f.path for f in files if posixpath.dirname(f.path) not in directories)})
        with self._lock:
            searched = [key for name in paths if (closure := self._closures.get(name)) for key in closure.searched]
            keys = tuple((name, _lkey_of(name)) for name in outside) + tuple(searched)
            self._extras.put(path, _Described(files, keys, (watch,)))  # closes the watch of the one it replaces
        if described is not None:
            described.append(path)
        return files

    def closure(self, program: str, path_env: str = DEFAULT_PATH) -> tuple[str, ...]:
        """Every path `program` needs, from cache when none of its files changed since it was computed."""
        return self._closure(program, path_env).paths

    def _closure(self, program: str, path_env: str) -> _Closure:
        with self._lock:
            cached = self._closures.get(program)
        if cached is not None and cached.current(path_env):
            return cached
        computed = self._compute(program, path_env)
        with self._lock:
            self._closures.put(program, computed)
        return computed

    def extra(self, path: str, seen: set[str] | None = None) -> list[str]:
        """A --cache file, or a directory and everything under it; ELF files bring their closures, and
        what their libraries open at run time (an Open MPI plug-in's libpmix brings PMIx's plug-ins)."""
        seen = {path} if seen is None else seen
        found = self._tree(path)
        more: list[str] = []
        for name in found:
            jobbudget.check()
            if not name.endswith("/") and os.path.isfile(name) and _is_elf(Sysroot(self.root), name):
                try:
                    closure = self._closure(name, DEFAULT_PATH)
                except JobError:
                    continue  # a plug-in whose libraries the master lacks: it cannot load here either
                more += closure.paths
                for tree in closure.trees:
                    if tree not in seen:
                        seen.add(tree)
                        more += self.extra(tree, seen)
        return found + more

    def _tree(self, path: str) -> list[str]:
        """A --cache file, or a directory (ending in '/') and every file, link and directory under it."""
        if not os.path.lexists(path):
            raise JobError(f"--cache {path}: no such file or directory on the master")
        found: list[str] = []
        tree = path
        if os.path.islink(path) and os.path.isdir(path):
            found.append(path)  # the link as a link, and the tree it names (--cache /usr/share/perl/5.36)
            tree = os.path.realpath(path)
        if os.path.isdir(tree) and not os.path.islink(tree):
            for top, dirs, files in os.walk(tree):
                jobbudget.check()
                found.append(top + "/")
                found += [posixpath.join(top, name) for name in sorted(files)]
                found += [posixpath.join(top, d) for d in dirs if os.path.islink(posixpath.join(top, d))]
                if len(found) > MAX_EXTRA_FILES:
                    raise JobError(f"--cache {path}: more than {MAX_EXTRA_FILES} files", hint="name a smaller tree")
        else:
            found.append(path)
        return found

    def describe(
        self, paths: Iterable[str], derived: dict[str, str] | None = None, user: p.JobRequest | None = None
    ) -> tuple[p.JobFile, ...]:
        """JobFiles for these paths, links resolved into link entries; directories first, then links, then
        files, each once. A path in `derived` is read from the master's file it maps to. `user`: the request
        whose user must be able to read every file, asked before any is hashed (jobaccess.guard_contents)."""
        sysroot = Sysroot(self.root)
        dirs: dict[str, p.JobFile] = {}
        links: dict[str, p.JobFile] = {}
        files: dict[str, p.JobFile | None] = {}  # None: a regular file not hashed yet
        for path in paths:
            jobbudget.check()
            if derived and path in derived:
                digest = self.store.digest(derived[path])
                files.setdefault(path, p.JobFile(path, 0o644, digest.sha256, digest.size))
                continue
            directory = path.endswith("/") and path != "/"
            try:
                resolved = sysroot.resolve(path.rstrip("/") or "/")
            except BeobootError as exc:
                raise JobError(f"{path}: {exc.message}") from None
            for link, target in resolved.links:
                if link not in links:  # with its owner: a node follows only links root chose (stage3.rootpaths)
                    try:
                        owner = os.lstat(sysroot.host(link))
                    except OSError as exc:
                        raise JobError(
                            f"{path}: the link {link} changed while it was described: {exc.strerror}",
                            hint="run the job again",
                        ) from None
                    links[link] = p.JobFile(link, 0o777, link=target, uid=owner.st_uid, gid=owner.st_gid)
            st = os.stat(sysroot.host(resolved.real))
            if stat.S_ISDIR(st.st_mode):
                if directory or resolved.real != "/":
                    dirs.setdefault(
                        resolved.real,
                        p.JobFile(
                            resolved.real,
                            st.st_mode & 0o7777,
                            uid=st.st_uid,
                            gid=st.st_gid,
                            acl=acl_of(str(sysroot.host(resolved.real))),
                        ),
                    )
            elif stat.S_ISREG(st.st_mode):
                files.setdefault(resolved.real, None)
            # a FIFO, socket or device is passed by: it has no content to bring, and opening it could block
        unhashed = [real for real, entry in files.items() if entry is None]
        if user is not None:
            guard_contents(unhashed, user.uid, user.gid, user.groups, self.root)
        for real in unhashed:
            jobbudget.check()
            host = str(sysroot.host(real))
            digest = self.store.digest(host) if user is None or user.uid == 0 else self._digest_as(user, host, real)
            files[real] = p.JobFile(
                real, digest.mode, digest.sha256, digest.size, uid=digest.uid, gid=digest.gid, acl=acl_of(host)
            )
        ordered = sorted(dirs.values(), key=lambda f: f.path)
        return tuple(ordered + list(links.values()) + [entry for entry in files.values() if entry is not None])

    def _digest_as(self, user: p.JobRequest, host: str, real: str) -> Digest:
        """Hash the file as the job's user opens it: guard_contents asked about the path a moment before,
        but a user who may write a directory on the way could swap a link in since (to root's file); the
        kernel checks this open itself, and the last component, a link by now, is refused (O_NOFOLLOW)."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        try:
            with UserView(user.uid, user.gid, user.groups):
                fd = os.open(host, flags)
        except OSError as exc:
            raise AccessDenied(
                f"{real}: changed while it was checked, or the job's user (uid {user.uid}) may not "
                f"read it now: {exc.strerror}",
                hint="run the job again",
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise AccessDenied(
                    f"{real}: changed while it was checked: no regular file now", hint="run the job again"
                )
            return self.store.digest_opened(fd, host)
        finally:
            os.close(fd)

    # --- internals ----------------------------------------------------------------------------------------

    def _compute(self, program: str, path_env: str) -> _Closure:
        sysroot = Sysroot(self.root)
        resolver = LibraryResolver(sysroot, checkpoint=jobbudget.check)
        paths: list[str] = []
        searched_path: list[str] = []  # PATH directories an env line looked in
        used_path: str | None = None
        current = program
        for _ in range(MAX_SHEBANG_DEPTH + 1):
            paths.append(current)
            if _is_elf(sysroot, current):
                paths += self._elf_closure(resolver, program, current)
                break
            try:
                with open_regular(str(sysroot.host(sysroot.resolve(current).real)), follow=False) as f:
                    shebang = parse_shebang(f.read(256))
            except NotRegularFile:
                raise JobError(f"{current}: not a regular file on the master", hint="name a program") from None
            except (OSError, BeobootError) as exc:
                raise JobError(f"{current}: cannot read it on the master: {exc}") from None
            if shebang is None:
                raise JobError(f"{current}: neither an ELF program nor a '#!' script", hint="name a program")
            command = env_command(shebang)
            if command is None or not _is_elf(sysroot, shebang[0]):
                current = shebang[0]
                continue
            # '#!/usr/bin/env python3': env finds the command on the job's PATH on the node, where only
            # what the job brought exists; bring the one the master's PATH finds, which env then finds too
            paths += [shebang[0], *self._elf_closure(resolver, program, shebang[0])]
            try:
                current = find_command(command, path_env, "/")
            except JobError as exc:
                raise JobError(
                    f"{current}: its '#!{shebang[0]} {command}' line names {exc.message}", hint=exc.hint
                ) from None
            used_path = path_env
            searched_path += _dirs_searched(path_env, current)
        else:
            raise JobError(f"{program}: more than {MAX_SHEBANG_DEPTH} nested '#!' interpreters")
        derived: list[tuple[str, str]] = []
        watches: list[SourceWatch] = []
        trees: list[str] = []
        for needed in [path for path in paths if not path.endswith("/")]:
            real = sysroot.resolve(needed).real
            stdlib = self.stdlib_zips.for_interpreter(sysroot, real)
            if stdlib is not None:
                paths += [stdlib.node_path, *self._extension_modules(stdlib.lib_dynload)]
                derived.append((stdlib.node_path, stdlib.host_path))
                watches.append(stdlib.watch)
                continue
            for rule in RUNTIME_RULES:
                for item in rule(real):
                    if os.path.isdir(item.rstrip("/")) and not item.endswith("/"):
                        trees.append(item)
                    elif os.path.lexists(item.rstrip("/")):
                        paths.append(item)
        unique = tuple(dict.fromkeys(paths))
        derived_paths = {node for node, _ in derived}
        keys = []
        for path in unique:
            if not path.endswith("/") and path not in derived_paths:
                real = str(sysroot.host(sysroot.resolve(path).real))
                if os.path.isfile(real):
                    keys.append((real, stat_key(os.stat(real))))
        searched = [str(sysroot.host(d)) for d in (*resolver.search_dirs, *LD_SO_CONF_PATHS)] + searched_path
        searched_keys = tuple((path, _lkey_of(path)) for path in dict.fromkeys(searched))
        return _Closure(
            unique, tuple(keys), searched_keys, tuple(derived), tuple(watches), used_path, tuple(dict.fromkeys(trees))
        )

    def _extension_modules(self, lib_dynload: str) -> list[str]:
        """lib-dynload (the directory itself: the landmark of Python's exec prefix) and every extension
        module in it whose libraries the master has, with them. One whose library is missing cannot be
        imported on the master either; it is left out rather than failing every Python job."""
        paths = [lib_dynload + "/"]
        for name in sorted(os.listdir(lib_dynload)) if os.path.isdir(lib_dynload) else []:
            module = posixpath.join(lib_dynload, name)
            if name.endswith(".so") and os.path.isfile(module):
                try:
                    paths += [module, *self.closure(module)]
                except JobError:
                    continue
        return paths

    def _elf_closure(self, resolver: LibraryResolver, program: str, elf: str) -> list[str]:
        try:
            return [n.path for n in resolver.closure([elf])]
        except BeobootError as exc:
            raise JobError(f"{program}: {exc.message}", hint=exc.hint) from None


def _is_elf(sysroot: Sysroot, path: str) -> bool:
    """ldso.is_elf() for a path a job named: only a regular file is opened, so a FIFO never blocks beoserv."""
    try:
        with open_regular(str(sysroot.host(sysroot.resolve(path).real)), follow=False) as f:
            return f.read(len(ELF_MAGIC)) == ELF_MAGIC
    except (OSError, BeobootError):
        return False


def _close_watches(described: _Described) -> None:
    for watch in described.watches:
        watch.close()


def env_command(shebang: tuple[str, ...]) -> str | None:
    """NAME of a '#!/usr/bin/env [-S] [-i] [VAR=VALUE...] NAME ...' line; None for any other interpreter."""
    if posixpath.basename(shebang[0]) != "env" or len(shebang) < 2:
        return None
    for word in shebang[1].split():
        if word in ("-S", "-i", "--split-string", "--ignore-environment") or "=" in word:
            continue
        return None if word.startswith("-") else word
    return None


def _is_shell(shebang: tuple[str, ...]) -> bool:
    """Whether a '#!' line runs a shell: '#!/bin/sh', or '#!/usr/bin/env bash'."""
    interpreter = env_command(shebang) or shebang[0]
    return posixpath.basename(interpreter) in SHELLS


def _read_script(path: str, key: StatKey | None, shebang: bool) -> str:
    """ManifestBuilder._script_text's reading, for the file at `path` with stat key `key`."""
    data = b""
    if key is not None and key[2] <= MAX_SCRIPT:
        try:
            with open_regular(path) as f:
                data = f.read()
        except OSError:
            pass
    if shebang and not ((line := parse_shebang(data[:256])) and _is_shell(line)):
        data = b""
    return data.decode("utf-8", "replace")


def _interpreter_of(command: str, path_env: str) -> tuple[str, str, tuple[str, ...]]:
    """(interpreter as named, its real file, '#!' arguments): the command itself for a program (or a file
    that cannot be read), the '#!' interpreter of a script ('#!/usr/bin/env NAME': NAME on this PATH)."""
    itself = (command, os.path.realpath(command), ())
    try:
        with open_regular(command) as f:
            shebang = parse_shebang(f.read(256))
    except OSError:
        return itself
    if shebang is None:
        return itself
    interpreter, arguments = shebang[0], shebang[1:]
    if (name := env_command(shebang)) is not None:
        try:
            interpreter, arguments = find_command(name, path_env, "/"), ()
        except JobError:
            return itself
    return interpreter, os.path.realpath(interpreter), arguments


def _dirs_searched(path_env: str, found: str) -> list[str]:
    """The PATH directories looked in before and at `found`: a command put in one of them later would be
    found first (a new file changes its directory's mtime)."""
    directories = []
    for directory in (path_env or DEFAULT_PATH).split(":"):
        directories.append(directory or "/")
        if posixpath.dirname(found) == posixpath.normpath(directory or "/"):
            break
    return directories


def _merge(*groups: tuple[p.JobFile, ...]) -> tuple[p.JobFile, ...]:
    """Described groups as one, as describe() orders them: directories (sorted), links, files; each path
    once (the first group's entry wins: the program's closure before --cache trees)."""
    if len(groups) == 1:
        return groups[0]
    by_path: dict[str, p.JobFile] = {}
    for group in groups:
        for entry in group:
            by_path.setdefault(entry.path, entry)
    dirs = sorted((f for f in by_path.values() if not f.sha256 and not f.link), key=lambda f: f.path)
    links = [f for f in by_path.values() if f.link]
    return tuple(dirs + links + [f for f in by_path.values() if f.sha256])


def _manifest(
    request: p.JobRequest, executable: str, files: tuple[p.JobFile, ...], users: JobUsers, root: str = "/"
) -> p.JobManifest:
    above = guard(files, request.uid, request.gid, request.groups, root)  # AccessDenied: the user may not have one
    if above:
        files = _merge(files, tuple(above))
    user, groups = users.entries(request.uid, request.gid, request.groups, request.env)
    return p.JobManifest(
        argv=request.argv,
        executable=executable,
        env=request.env,
        cwd=request.cwd,
        uid=request.uid,
        gid=request.gid,
        files=files,
        groups=request.groups,
        passwd_entry=user,
        group_entries=groups,
    )


def _lkey_of(path: str) -> StatKey | None:
    """The stat key of the path itself (a link's own inode and mtime: a link pointed elsewhere changes it)."""
    try:
        return stat_key(os.lstat(path))
    except OSError:
        return None
