"""The Python modules a Python job imports beyond the stdlib: `bpsh 0 python3 prog.py`, where prog.py imports
its own helper.py, yaml from the master's dist-packages, or a package from a virtualenv or PYTHONPATH.

A node holds only what jobs brought, so the job's interpreter would find nothing on its sys.path but the
stdlib zip (beoboot.master.manifest.python). This works that sys.path out as CPython will on the node (Modules/getpath.py,
Lib/site.py: the script's directory or the working directory, PYTHONPATH, the stdlib, a venv's
site-packages or the user's and the system's site/dist-packages and their .pth lines), reads the imports of
the program with beoboot.resolve.pyimports (`import a.b`, `from a import b`, relative imports,
`importlib.import_module("x")`),
finds each module as the import system would, and follows the imports of every module it finds, as
modulefinder does, without running anything. It brings each module found outside the stdlib a whole
top-level package at a time (so its data files, its submodules imported by name at run time and its
extension modules come too, with their libraries), its distribution's metadata (.dist-info/.egg-info, for
importlib.metadata) and the .pth file that put its directory on sys.path.

Modules imported in a `try:` that the master has come along too: harmless. A module named only at run time
(`import_module(name)`) still needs --cache.
"""

from __future__ import annotations

import glob
import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from beoboot.master.manifest import budget as jobbudget
from beoboot.master.manifest.python import python_version
from beoboot.master.manifest.sourcecache import PerFile, Searches, read_text
from beoboot.master.manifest.sourcewatch import SourceWatch
from beoboot.regularfile import read_regular
from beoboot.resolve.pyimports import ImportStatement, PythonSourceError, resolve, scan

MAX_MODULES = 20000  # modules read for one job: past this the rest need --cache
MAX_SOURCE = 4 << 20  # a larger .py file is not read for its imports
MAX_LIST = 1 << 20  # a larger pyvenv.cfg, .pth or top_level.txt is not read
OPTIONS_WITH_VALUE = "cmWX"  # CPython's one-letter options that take a value (Modules/main.c, Python/getopt.c)


@dataclass(frozen=True)
class PythonStart:
    """What a Python interpreter is asked to run, and the options that change its sys.path."""

    interpreter: str  # the path it is run as (a venv's bin/python: its pyvenv.cfg is found from there)
    real: str  # the interpreter's real file, /usr/bin/python3.11
    cwd: str
    script: str | None = None  # python3 prog.py, or the script whose '#!' names the interpreter
    code: str | None = None  # python3 -c CODE
    module: str | None = None  # python3 -m NAME
    ignore_environment: bool = False  # -E, -I: PYTHONPATH, PYTHONNOUSERSITE ignored
    no_user_site: bool = False  # -s, -I
    no_site: bool = False  # -S
    safe_path: bool = False  # -P, -I: neither the script's directory nor the working directory on sys.path


def python_start(interpreter: str, real: str, args: tuple[str, ...], cwd: str) -> PythonStart:
    """Parse the interpreter's command line as CPython does: options (combinable, `-c`/`-m` end them), then
    the script and its own arguments. `python3 -` and `python3` alone read stdin: nothing to follow."""
    flags: set[str] = set()
    values: dict[str, str] = {}
    script = None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            script = rest[0] if rest else None
            break
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs" and rest:
                rest.pop(0)
            continue
        if not arg.startswith("-") or arg == "-":
            script = None if arg == "-" else arg
            break
        for index, letter in enumerate(arg[1:], 1):
            if letter in OPTIONS_WITH_VALUE:
                value = arg[index + 1 :] or (rest.pop(0) if rest else "")
                values.setdefault(letter, value)
                break
            flags.add(letter)
        if "c" in values or "m" in values:
            break
    isolated = "I" in flags
    if script is not None:
        script = posixpath.normpath(posixpath.join(cwd, script))
    return PythonStart(
        interpreter,
        real,
        cwd,
        script,
        values.get("c"),
        values.get("m"),
        ignore_environment=isolated or "E" in flags,
        no_user_site=isolated or "s" in flags,
        no_site="S" in flags,
        safe_path=isolated or "P" in flags,
    )


@dataclass(frozen=True)
class SearchPath:
    """sys.path as the job's interpreter will have it, split by what each part means for the job."""

    entries: tuple[str, ...]  # in order
    stdlib: frozenset[str]  # entries whose modules every Python job already gets
    added_by: Mapping[str, str] = field(default_factory=dict)  # entry -> the .pth file that added it
    venv_config: str | None = None  # pyvenv.cfg, which the node's interpreter must find too


def search_path(start: PythonStart, env: Mapping[str, str]) -> SearchPath:
    version = python_version(start.real) or ""
    prefix = posixpath.dirname(posixpath.dirname(start.real))
    stdlib_dir = f"{prefix}/lib/python{version}"
    entries: list[str] = []
    if not start.safe_path:
        entries.append(posixpath.dirname(os.path.realpath(start.script)) if start.script else start.cwd)
    if not start.ignore_environment:
        entries += [posixpath.normpath(posixpath.join(start.cwd, d)) for d in env.get("PYTHONPATH", "").split(":") if d]
    stdlib = [stdlib_dir, f"{stdlib_dir}/lib-dynload"]
    entries += stdlib
    added_by: dict[str, str] = {}
    venv_config = _venv_config(start.interpreter)
    if not start.no_site:
        for site_dir in _site_dirs(start, env, prefix, version, venv_config):
            entries.append(site_dir)
            for pth, directory in _pth_directories(site_dir):
                if directory not in entries:
                    entries.append(directory)
                    added_by[directory] = pth
    return SearchPath(tuple(dict.fromkeys(entries)), frozenset(stdlib), added_by, venv_config)


def _venv_config(interpreter: str) -> str | None:
    """pyvenv.cfg beside the interpreter's directory or one up, as getpath.py looks for it."""
    bin_dir = posixpath.dirname(interpreter)
    for candidate in (f"{bin_dir}/pyvenv.cfg", f"{posixpath.dirname(bin_dir)}/pyvenv.cfg"):
        if os.path.isfile(candidate):
            return candidate
    return None


def _site_dirs(
    start: PythonStart, env: Mapping[str, str], prefix: str, version: str, venv_config: str | None
) -> list[str]:
    """Lib/site.py's directories (with Debian's dist-packages), those that exist."""
    system = [f"{prefix}/lib/python{version}/site-packages"]
    if prefix == "/usr":  # Debian's python3: local installs first, then the packages' own
        system = [
            f"/usr/local/lib/python{version}/dist-packages",
            "/usr/lib/python3/dist-packages",
            f"/usr/lib/python{version}/dist-packages",
            *system,
        ]
    if venv_config is not None:
        venv = posixpath.dirname(venv_config)
        found = [f"{venv}/lib/python{version}/site-packages"]
        if _config_value(venv_config, "include-system-site-packages").lower() == "true":
            found += system
    else:
        user_site_off = start.no_user_site or (not start.ignore_environment and env.get("PYTHONNOUSERSITE"))
        home = env.get("HOME", "")
        found = [] if user_site_off or not home else [f"{home}/.local/lib/python{version}/site-packages"]
        found += system
    return [d for d in found if os.path.isdir(d)]


def _config_value(path: str, key: str) -> str:
    for line in _lines(path):
        name, equals, value = line.partition("=")
        if equals and name.strip().lower() == key:
            return value.strip()
    return ""


def _lines(path: str) -> list[str]:
    """The lines of a small text file a user may have put there: none when it is missing, too large, or a
    FIFO or device (reading one would hold beoserv's thread for ever)."""
    try:
        return read_regular(path, MAX_LIST).decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _pth_directories(site_dir: str) -> Iterator[tuple[str, str]]:
    """(pth file, directory) for each line of site_dir's .pth files that names an existing directory (lines
    starting with 'import' are code, run at start-up; they name no directory)."""
    for pth in sorted(glob.glob(posixpath.join(glob.escape(site_dir), "*.pth"))):
        for line in _lines(pth):
            line = line.strip()
            if line and not line.startswith(("#", "import ", "import\t")):
                directory = posixpath.normpath(posixpath.join(site_dir, line))
                if os.path.isdir(directory):
                    yield pth, directory


# --- finding modules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A module as the import system finds it."""

    name: str
    source: str | None  # the file to read its imports from (a package's __init__.py); None: an extension module
    brought: str  # what the job needs for it: the top-level package's directory, or the module's file
    portions: tuple[str, ...] = ()  # a package's directories (its __path__), where its submodules are
    entry: str = ""  # the sys.path entry it was found in


def _module_in(directory: str, leaf: str, suffixes: tuple[str, ...]) -> tuple[str, str | None] | None:
    """('package', __init__) / ('module', file) / ('namespace', None) for `leaf` in one directory, or None."""
    base = posixpath.join(directory, leaf)
    init = f"{base}/__init__.py"
    if os.path.isfile(init):
        return "package", init
    for suffix in suffixes:
        if os.path.isfile(base + suffix):
            return "module", base + suffix
    if os.path.isdir(base):
        return "namespace", None
    return None


def module_suffixes(version: str) -> tuple[str, ...]:
    """The file names FileFinder tries, in its order: extension modules, then source (and bytecode)."""
    tag = version.replace(".", "")
    return (f".cpython-{tag}-x86_64-linux-gnu.so", ".abi3.so", ".so", ".py", ".pyc")


# --- the cache ---------------------------------------------------------------------------------------------


class PythonImports:
    """The paths a Python job's imports need, cached per way of starting the interpreter while nothing in
    the directories searched or read changed; each file's imports are cached by stat key."""

    def __init__(self) -> None:
        self._searches = Searches()
        self._imports_of = PerFile(lambda path, key: _statements(read_text(path, key, MAX_SOURCE), path))

    def paths(self, start: PythonStart, env: Mapping[str, str], *, cached_only: bool = False) -> tuple[str, ...] | None:
        """Paths to bring (module files, package trees, metadata, the script); `cached_only`: None unless
        that is known from cache."""
        key = (start, *(env.get(name) for name in ("PYTHONPATH", "PYTHONNOUSERSITE", "HOME")))
        return self._searches.get(key, lambda watch: self._search(start, env, watch), cached_only=cached_only)

    def _search(self, start: PythonStart, env: Mapping[str, str], watch: SourceWatch) -> list[str]:
        path = search_path(start, env)
        brought_zips = []
        for entry in path.entries:
            watch.add(entry)
            if entry not in path.stdlib and os.path.isfile(entry):
                brought_zips.append(entry)  # a zip or egg on sys.path: zipimport reads it whole, so it comes whole
        suffixes = module_suffixes(python_version(start.real) or "")
        brought: dict[str, None] = dict.fromkeys(brought_zips)
        if path.venv_config:
            brought[path.venv_config] = None
        if start.script and os.path.isfile(start.script):
            brought[start.script] = None
        finder = _Finder(path, suffixes, watch)
        queue: list[tuple[str, str | None, bool]] = []  # (module name, its source, is a package)
        if start.script:
            queue.append(("__main__", start.script, False))
        if start.code is not None:
            queue.append(("__main__", None, False))
        if start.module:
            for found in finder.chain(start.module):
                if found.entry in path.stdlib:
                    continue
                self._bring(found, path, brought)
                queue.append((found.name, found.source, bool(found.portions)))
            main = finder.find(f"{start.module}.__main__")
            if main is not None:
                queue.append((main.name, main.source, False))
        scanned: set[str | None] = set()
        handled: set[str] = set()
        while queue and len(scanned) < MAX_MODULES:
            name, source, is_package = queue.pop()
            jobbudget.check()
            if source in scanned:
                continue
            scanned.add(source)
            statements = self._imports_of(source) if source else _statements(start.code or "", "<string>")
            for wanted in [imported.name for imported in resolve(statements, name, is_package, dynamic=True)]:
                for found in finder.chain(wanted):
                    if found.name in handled:
                        continue
                    handled.add(found.name)
                    if found.entry in path.stdlib:
                        continue  # every Python job has the stdlib: nothing to bring, nothing to follow
                    self._bring(found, path, brought)
                    if found.source:
                        queue.append((found.name, found.source, bool(found.portions)))
        return list(brought)

    def _bring(self, found: Found, path: SearchPath, brought: dict[str, None]) -> None:
        if found.entry in path.stdlib or not found.brought:  # the stdlib, or a namespace package
            return
        brought[found.brought] = None
        if found.entry in path.added_by:
            brought[path.added_by[found.entry]] = None
        if "." not in found.name:
            for metadata in _metadata_of(found.entry, found.name):
                brought[metadata] = None


class _Finder:
    """Finds dotted module names on one SearchPath, remembering what it found."""

    def __init__(self, path: SearchPath, suffixes: tuple[str, ...], watch: SourceWatch) -> None:
        self.path = path
        self.suffixes = suffixes
        self.watch = watch
        self._found: dict[str, Found | None] = {}

    def chain(self, dotted: str) -> list[Found]:
        """The module `dotted` and each package above it, as far as they are found: a.b.c -> a, a.b, a.b.c."""
        parts = dotted.split(".")
        found = []
        for end in range(1, len(parts) + 1):
            module = self.find(".".join(parts[:end]))
            if module is None:
                break
            found.append(module)
        return found

    def find(self, dotted: str) -> Found | None:
        if dotted not in self._found:
            self._found[dotted] = self._look(dotted)
        return self._found[dotted]

    def _look(self, dotted: str) -> Found | None:
        parent_name, _, leaf = dotted.rpartition(".")
        if not leaf.isidentifier():
            return None
        if parent_name:
            parent = self.find(parent_name)
            if parent is None or not parent.portions:
                return None
            places = [(directory, parent.entry, parent.brought) for directory in parent.portions]
        else:
            places = [(entry, entry, "") for entry in self.path.entries]
        namespace: list[str] = []
        entry_of_namespace = ""
        for directory, entry, brought in places:
            kind = _module_in(directory, leaf, self.suffixes)
            if kind is None:
                continue
            what, source = kind
            base = posixpath.join(directory, leaf)
            if what == "namespace":
                namespace.append(base)
                entry_of_namespace = entry_of_namespace or entry
                continue
            self.watch.add(base if what == "package" else directory)
            readable = source if source and source.endswith(".py") else None
            if what == "package":
                return Found(dotted, readable, brought or base, (base,), entry)
            return Found(dotted, readable, brought or source or "", (), entry)
        if namespace:
            for directory in namespace:
                self.watch.add(directory)
            # a namespace package has no file of its own: what its submodules need comes with them
            return Found(dotted, None, "", tuple(namespace), entry_of_namespace)
        return None


def _metadata_of(entry: str, top_level: str) -> list[str]:
    """The .dist-info/.egg-info of the distribution that installed `top_level` into `entry`: its
    top_level.txt names it, or, lacking one, its name is the module's (PyYAML's says yaml)."""
    found = []
    for metadata in sorted(glob.glob(posixpath.join(glob.escape(entry), "*.*-info"))):
        if not metadata.endswith((".dist-info", ".egg-info")):
            continue
        distribution = posixpath.basename(metadata).split("-")[0].lower().replace(".", "_")
        names = _top_level_names(metadata)
        if top_level in names or (not names and distribution == top_level.lower()):
            found.append(metadata)
    return found


def _top_level_names(metadata: str) -> set[str]:
    if not os.path.isdir(metadata):
        return set()
    return {line.strip() for line in _lines(f"{metadata}/top_level.txt") if line.strip()}


# --- reading imports ---------------------------------------------------------------------------------------


def _statements(text: str, filename: str) -> tuple[ImportStatement, ...]:
    """The imports in a program's text; none when it is not Python 3 (the interpreter will say so)."""
    try:
        return scan(text, filename)
    except PythonSourceError:
        return ()
