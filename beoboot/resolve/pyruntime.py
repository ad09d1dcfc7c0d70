"""The in-image Python runtime: the sysroot's interpreter, one zip of compiled modules, and `/init`.

The images have no shell: the kernel runs `/init`, a Python script, on the sysroot's own interpreter.
Everything the agent imports is found by walking import statements (beoboot.resolve.pyimports, which reads any
Python 3's source, not only the build host's) from the agent package and `/init`, against the SYSROOT's
stdlib and dist-packages (never the build host's), and packed into one zip at the place where the
interpreter looks for its stdlib by itself.

The zip holds bytecode when something here can compile for the sysroot's Python: the build host's own
interpreter if it is the same major.minor, else the sysroot's interpreter itself, run through the
sysroot's dynamic loader and libraries with the sysroot's stdlib (same architecture). Otherwise it holds
the .py sources, which the image's interpreter compiles as it imports them.

How Python 3.11 (and 3.12, 3.13: the same landmarks) finds that zip with no PYTHONHOME/PYTHONPATH
(Modules/getpath.py, frozen into the interpreter; landmarks for a build configured with prefix /usr on
Linux, named for the version: python313.zip, python3.13/...):
  * prefix: search up from the executable's directory (/usr/bin) for the ZIP_LANDMARK
    `lib/python311.zip` -> finds /usr/lib/python311.zip -> prefix = /usr. Without the zip it would look
    for the STDLIB_LANDMARKS `lib/python3.11/os.py` / `os.pyc` instead, and fall back to the compiled-in
    PREFIX with the warning "Could not find platform independent libraries <prefix>".
  * exec_prefix: search up for the PLATSTDLIB_LANDMARK `lib/python3.11/lib-dynload`, which must be a
    DIRECTORY -> /usr. Without it: "Could not find platform dependent libraries <exec_prefix>".
  * sys.path = [/usr/lib/python311.zip, /usr/lib/python3.11, /usr/lib/python3.11/lib-dynload]; the
    middle entry holds only lib-dynload in the image, which is harmless.
The executable's directory comes from argv[0] (the kernel's binfmt_script passes the shebang path) or
/proc/self/exe, so /init's shebang names the real interpreter path.

Extension modules cannot be imported from a zip: they stay real files in lib-dynload, listed in
`extensions` with the reason, and the caller adds them with their ELF closure.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import os
import posixpath
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from beoboot.errors import BeobootError, SysrootError, ToolError
from beoboot.log import log
from beoboot.regularfile import open_regular
from beoboot.resolve.elf import ElfIdentity, parse_identity
from beoboot.resolve.ldso import LibraryResolver
from beoboot.resolve.pyimports import PythonSourceError, decode_source, imports_of
from beoboot.resolve.sysroot import Sysroot

INIT_PATH = "/init"
# Any fixed date works (zip dates start in 1980); fixed so the zip has the same bytes on every build.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
DIST_PACKAGES = "/usr/lib/python3/dist-packages"

# Loaded by the interpreter itself at start-up or by C code, so no import statement names them:
# the codec registry imports `encodings` and the file system / stdio codecs (UTF-8 in the C locale,
# PEP 538/540); socket's C code encodes non-ASCII host names with the "idna" codec.
IMPLICIT_MODULES = (
    "encodings",
    "encodings.aliases",
    "encodings.ascii",
    "encodings.idna",
    "encodings.latin_1",
    "encodings.utf_8",
    "encodings.utf_8_sig",
)

# Left out unless asked for with extra_modules. Optional imports (in try/except ImportError) reach them,
# but the agent works without them; each costs megabytes or drags in a tree the agent never runs.
DEFAULT_EXCLUDES: dict[str, str] = {
    "ssl": "TLS: the cluster network uses HTTP with hash pins; pass extra_modules=('ssl',) for HTTPS",
    "_ssl": "TLS extension (libssl + libcrypto, megabytes); comes back with 'ssl'",
    "_hashlib": "OpenSSL hashes (libcrypto); hashlib falls back to the built-in _sha256/_md5/_blake2",
    "_bz2": "bz2 compression (libbz2); only optional imports in shutil/zipfile/tarfile reach it",
    "_lzma": "xz compression (liblzma); only optional imports in shutil/zipfile/tarfile reach it",
    "bz2": "needs _bz2 at import, so it would fail anyway; its importers catch ImportError",
    "lzma": "needs _lzma at import, so it would fail anyway; its importers catch ImportError",
    "_pydecimal": "pure-Python fallback of _decimal, which is in lib-dynload",
    "encodings.mbcs": "Windows only",
    "pydoc": "interactive help",
    "doctest": "test tool",
    "unittest": "test tool",
    "pdb": "debugger",
    "tkinter": "GUI",
    "_tkinter": "GUI",
    "curses": "terminal UI",
    "readline": "interactive line editing",
    "sqlite3": "database",
    "ctypes.macholib": "macOS only",
    "ctypes.util": "find_library runs ldconfig/gcc, which the image has not: the agent opens libc with CDLL(None)",
}
# Imports of the sysroot's modules that sit in a function no image calls, a module's self-test or command
# line (`python -m gzip`): importer -> {imported: where}. The walk does not follow them, as long as no line
# at the importer's top level imports that module too; an import the agent makes itself still brings it.
UNCALLED_IMPORTS: dict[str, dict[str, str]] = {
    # statistics brings fractions, decimal and _decimal (300 KB): 110 KB of a stage image after compression
    "random": {"statistics": "random._test_generator(), its self-test", "argparse": "random.main() (3.13)"},
    "gzip": {"argparse": "gzip.main()"},
    "ast": {"argparse": "ast.main()"},
    "calendar": {"argparse": "calendar.main()"},
    "dis": {"argparse": "dis._test() (3.11), dis.main()"},
    "inspect": {"argparse": "inspect._main()"},
    "py_compile": {"argparse": "py_compile.main()"},
    "tarfile": {"argparse": "tarfile.main()"},
    "tokenize": {"argparse": "tokenize.main()"},
    "zipfile": {"argparse": "zipfile.main()"},
    "pickle": {"doctest": "pickle._test()", "argparse": "its __main__ block", "pprint": "its __main__ block"},
}

# Modules that must come back together with an extra module, because the extra cannot work without them.
COMPANIONS: dict[str, tuple[str, ...]] = {"ssl": ("_ssl",), "hashlib": ("_hashlib",)}

# Always built in: the interpreter core, which exports no PyInit_ symbol for them.
# Names that a module puts into sys.modules itself, so they have no file of their own.
MODULE_ALIASES = {"os.path": "posixpath"}

CORE_BUILTINS = frozenset(
    {"builtins", "sys", "marshal", "_warnings", "_imp", "_frozen_importlib", "_frozen_importlib_external"}
)

_PYTHON_DIR = re.compile(r"python(\d+)\.(\d+)")


class ModuleKind(enum.StrEnum):
    SOURCE = "source"  # a .py file
    PACKAGE = "package"  # a directory with __init__.py
    EXTENSION = "extension"  # a shared object in lib-dynload
    BUILTIN = "builtin"  # compiled into the interpreter


@dataclass(frozen=True)
class PythonRuntime:
    interpreter: str  # sysroot path of the real interpreter, e.g. /usr/bin/python3.11
    interpreter_links: tuple[str, ...]  # e.g. ("/usr/bin/python3",): the lead adds them as links
    zip_path: str  # archive path of the zip, where the interpreter finds it on its own
    zip_bytes: bytes  # deterministic: sorted names, fixed timestamps
    extensions: tuple[tuple[str, str], ...]  # (sysroot path of a lib-dynload .so, reason)
    modules: tuple[str, ...]  # module names in the zip
    init_path: str  # archive path of the init script
    init_bytes: bytes


@dataclass(frozen=True)
class SysrootPython:
    """Where the sysroot's Python lives, read from its file layout (never by running it)."""

    version: tuple[int, int]
    interpreter: str  # real file
    interpreter_links: tuple[str, ...]
    stdlib_dir: str  # /usr/lib/python3.11
    dynload_dir: str  # /usr/lib/python3.11/lib-dynload
    site_dirs: tuple[str, ...]  # /usr/lib/python3/dist-packages
    builtins: frozenset[str]

    @property
    def zip_path(self) -> str:
        major, minor = self.version
        return f"/usr/lib/python{major}{minor}.zip"


@dataclass(frozen=True)
class Module:
    name: str
    kind: ModuleKind
    origin: str | None  # sysroot path (or, for the agent package, build-host path) of the file
    host_path: Path | None  # build-host path of the file to read
    imported_by: str


@dataclass
class ModuleGraph:
    modules: dict[str, Module] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # name -> first importer (optional imports)
    excluded: dict[str, str] = field(default_factory=dict)  # name -> first importer


# -- reading the sysroot's layout ----------------------------------------------------------------------


def parse_python_dir_name(name: str) -> tuple[int, int] | None:
    """(3, 11) from "python3.11", None for anything else ("python3", "python3.11-config")."""
    match = _PYTHON_DIR.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def find_sysroot_python(sysroot: Sysroot) -> SysrootPython:
    """The sysroot's python3: the version that /usr/bin/python3 points to, else the newest stdlib dir."""
    versions = sorted(
        v
        for name in sysroot.listdir("/usr/lib")
        if (v := parse_python_dir_name(name)) and sysroot.is_file(f"/usr/lib/{name}/os.py")
    )
    if not versions:
        raise SysrootError(
            f"no Python standard library (/usr/lib/python3.N/os.py) in sysroot {sysroot.root}",
            hint="install python3 in the sysroot (apt install python3)",
        )
    links: tuple[str, ...] = ()
    version = versions[-1]
    if sysroot.exists("/usr/bin/python3"):
        resolved = sysroot.resolve("/usr/bin/python3")
        named = parse_python_dir_name(posixpath.basename(resolved.real))
        if named in versions:
            version = named
            links = ("/usr/bin/python3",) if resolved.links else ()
    major, minor = version
    wanted = f"/usr/bin/python{major}.{minor}"
    if not sysroot.is_file(wanted):
        raise SysrootError(f"{wanted} missing in sysroot {sysroot.root}", hint="install python3-minimal in the sysroot")
    interpreter = sysroot.resolve(wanted).real
    stdlib = f"/usr/lib/python{major}.{minor}"
    return SysrootPython(
        version=version,
        interpreter=interpreter,
        interpreter_links=links,
        stdlib_dir=stdlib,
        dynload_dir=f"{stdlib}/lib-dynload",
        site_dirs=(DIST_PACKAGES,) if sysroot.exists(DIST_PACKAGES) else (),
        builtins=CORE_BUILTINS | _builtin_modules_of(sysroot, interpreter),
    )


def _builtin_modules_of(sysroot: Sysroot, interpreter: str) -> frozenset[str]:
    try:
        return read_builtin_modules(sysroot.host(interpreter))
    except (ELFError, OSError, ValueError) as exc:  # pyelftools raises more than ELFError on a damaged file
        raise SysrootError(
            f"sysroot {sysroot.root}: cannot read the Python interpreter {interpreter} ({exc}); reinstall "
            "python3-minimal in the sysroot"
        ) from None


def read_builtin_modules(interpreter: Path) -> frozenset[str]:
    """Modules compiled into the interpreter: one exported PyInit_<name> symbol each.

    Debian links libpython statically and exports these for extension modules, so they are in .dynsym.
    """
    with open_regular(interpreter) as f:
        elf = ELFFile(f)
        names: set[str] = set()
        for section_name in (".dynsym", ".symtab"):
            section = elf.get_section_by_name(section_name)
            if not isinstance(section, SymbolTableSection):
                continue
            for symbol in section.iter_symbols():
                if symbol.name.startswith("PyInit_") and symbol["st_shndx"] != "SHN_UNDEF":
                    names.add(symbol.name.removeprefix("PyInit_"))
    return frozenset(names)


# -- finding the modules ----------------------------------------------------------------------------


def is_excluded(name: str, excludes: dict[str, str]) -> bool:
    return any(name == ex or name.startswith(ex + ".") for ex in excludes)


class ModuleFinder:
    """Breadth-first walk of import statements against the sysroot's module directories."""

    def __init__(
        self,
        sysroot: Sysroot,
        python: SysrootPython,
        packages: Mapping[str, Path],
        excludes: dict[str, str],
        scanned: dict[tuple[str, Path], list[tuple[str, bool]]] | None = None,
    ) -> None:
        self.sysroot = sysroot
        self._scanned = {} if scanned is None else scanned  # (name, file) -> its imports: shared by a build
        self.python = python
        self.packages = packages
        self.excludes = excludes
        self.graph = ModuleGraph()
        major, minor = python.version
        self._ext_suffixes = (f".cpython-{major}{minor}-", ".abi3.so", ".so")
        self._queue: deque[Module] = deque()

    def add(self, name: str, imported_by: str, required: bool = True) -> None:
        if name in MODULE_ALIASES:
            name = MODULE_ALIASES[name]
        if name in self.graph.modules or name in self.graph.missing or name in self.graph.excluded:
            return
        if is_excluded(name, self.excludes):
            if required:
                self.graph.excluded[name] = imported_by
            return
        parent_name, _, leaf = name.rpartition(".")
        if parent_name:
            self.add(parent_name, imported_by)
            parent = self.graph.modules.get(parent_name)
            if parent is None or parent.kind != ModuleKind.PACKAGE:
                if required:
                    self.graph.missing.setdefault(name, imported_by)
                return
            module = self._locate(name, [posixpath.dirname(parent.origin or "")], imported_by, parent.host_path)
        else:
            module = self._locate_top(name, imported_by)
        if module is None:
            if required:
                self.graph.missing.setdefault(name, imported_by)
            return
        self.graph.modules[name] = module
        if module.kind in (ModuleKind.SOURCE, ModuleKind.PACKAGE):
            self._queue.append(module)

    def add_script(self, name: str, source: str) -> None:
        """Walk the imports of a script that is not itself in the zip (/init)."""
        for imported, required in imports_of(source, name, False, name):
            self.add(imported, name, required)
        self.run()

    def run(self) -> ModuleGraph:
        while self._queue:
            module = self._queue.popleft()
            for imported, required in self._imports(module):
                self.add(imported, module.name, required)
        return self.graph

    def _imports(self, module: Module) -> list[tuple[str, bool]]:
        assert module.host_path is not None
        key = (module.name, module.host_path)
        if key not in self._scanned:
            self._scanned[key] = self._scan(module)
        return self._scanned[key]

    def _scan(self, module: Module) -> list[tuple[str, bool]]:
        assert module.host_path is not None
        where = str(module.origin)
        try:
            source = decode_source(_read(module.host_path), where)
            found = imports_of(source, module.name, module.kind == ModuleKind.PACKAGE, where)
            uncalled = UNCALLED_IMPORTS.get(module.name, {})
            if module.name.partition(".")[0] not in self.packages and uncalled:
                skipped = {name: why for name, why in uncalled.items() if not _imported_at_top_level(source, name)}
                found = [item for item in found if not is_excluded(item.name, skipped)]
            return list(found)
        except (PythonSourceError, OSError) as exc:
            what = exc.message if isinstance(exc, BeobootError) else f"{where}: {exc.strerror or exc}"
        top = module.name.partition(".")[0]
        if top in self.packages:  # the project's own code, from the checkout
            raise SysrootError(f"module {what}; fix it in {self.packages[top]}")
        raise SysrootError(
            f"sysroot {self.sysroot.root}: Python module {what} (imported by {module.imported_by}); reinstall the "
            f"package that owns it in the sysroot (chroot {self.sysroot.root} dpkg -S {where})"
        )

    def _locate_top(self, name: str, imported_by: str) -> Module | None:
        if name in self.packages:
            init = self.packages[name] / "__init__.py"
            if not init.is_file():
                raise SysrootError(
                    f"package {name} ({self.packages[name]}) has no __init__.py", hint="pass the package's directory"
                )
            return Module(name, ModuleKind.PACKAGE, str(init), init, imported_by)
        if name in self.python.builtins:
            return Module(name, ModuleKind.BUILTIN, None, None, imported_by)
        dirs = [self.python.stdlib_dir, self.python.dynload_dir, *self.python.site_dirs]
        return self._locate(name, dirs, imported_by, None)

    def _locate(self, name: str, dirs: list[str], imported_by: str, parent_host: Path | None) -> Module | None:
        leaf = name.rpartition(".")[2]
        if parent_host is not None and name.partition(".")[0] in self.packages:
            # the project's packages come from the build host's checkout, not from the sysroot
            here = parent_host.parent
            if (here / leaf / "__init__.py").is_file():
                return Module(
                    name, ModuleKind.PACKAGE, str(here / leaf / "__init__.py"), here / leaf / "__init__.py", imported_by
                )
            if (here / f"{leaf}.py").is_file():
                return Module(name, ModuleKind.SOURCE, str(here / f"{leaf}.py"), here / f"{leaf}.py", imported_by)
            return None
        for directory in dirs:
            init = f"{directory}/{leaf}/__init__.py"
            if self.sysroot.is_file(init):
                return Module(name, ModuleKind.PACKAGE, init, self.sysroot.host(init), imported_by)
            plain = f"{directory}/{leaf}.py"
            if self.sysroot.is_file(plain):
                return Module(name, ModuleKind.SOURCE, plain, self.sysroot.host(plain), imported_by)
            for entry in self.sysroot.listdir(directory):
                if entry.startswith(leaf + ".") and self._is_extension_name(entry[len(leaf) :]):
                    path = f"{directory}/{entry}"
                    if directory != self.python.dynload_dir:
                        log.warning("extension module %s (%s) is outside lib-dynload; left out", name, path)
                        return None
                    return Module(name, ModuleKind.EXTENSION, path, self.sysroot.host(path), imported_by)
        return None

    def _is_extension_name(self, suffix: str) -> bool:
        return suffix.endswith(".so") and (
            suffix == ".so" or suffix == ".abi3.so" or suffix.startswith(self._ext_suffixes[0])
        )


def _imported_at_top_level(source: str, name: str) -> bool:
    """Whether a line of `source` that starts at column 0 (the module's top level) imports `name`."""
    return re.search(rf"^(?:import|from)\b[^\n]*\b{re.escape(name)}\b", source, re.MULTILINE) is not None


def find_modules(
    sysroot: Sysroot,
    python: SysrootPython,
    packages: Mapping[str, Path],
    init_source: str,
    extra_modules: tuple[str, ...] | list[str] = (),
    scanned: dict[tuple[str, Path], list[tuple[str, bool]]] | None = None,
) -> ModuleGraph:
    excludes = dict(DEFAULT_EXCLUDES)
    for extra in extra_modules:
        for name in (extra, *COMPANIONS.get(extra, ())):
            excludes.pop(name, None)
    finder = ModuleFinder(sysroot, python, packages, excludes, scanned)
    for name in IMPLICIT_MODULES:
        finder.add(name, "the interpreter")
    for name in extra_modules:
        finder.add(name, "extra_modules")
    for name in extra_modules:  # checked before the walk, so a typo fails fast
        if name not in finder.graph.modules:
            raise SysrootError(
                f"extra module {name!r} not found in sysroot {sysroot.root}",
                hint=f"check the name; modules are looked up in {python.stdlib_dir} and {', '.join(python.site_dirs)}",
            )
    # only what /init imports, from the stage's program down: each image carries its own stage's code
    finder.add_script(INIT_PATH, init_source)
    return finder.run()


# -- writing the zip and /init ----------------------------------------------------------------------


def host_can_compile_for(version: tuple[int, int]) -> bool:
    """Bytecode is only valid for one major.minor: compile with the build host only if they match."""
    return sys.version_info[:2] == version


@dataclass(frozen=True)
class Compiler:
    """A Python on the build host that writes bytecode for the sysroot's version."""

    argv: tuple[str, ...]  # runs it; "-S -s -c CODE" follow
    env: tuple[tuple[str, str], ...]
    description: str  # for messages


# Run by the sysroot's interpreter before it is trusted to compile: it must be the version the sysroot's
# layout says and read only the sysroot's stdlib, never the build host's.
_PROBE_CHILD = "import json, sys; print(json.dumps([list(sys.version_info[:2]), sys.prefix, sys.path]))"


def find_compiler(sysroot: Sysroot, python: SysrootPython) -> Compiler | None:
    """The build host's interpreter if it is the sysroot's version, else the sysroot's own if it runs here,
    else None: then the zip holds sources."""
    if host_can_compile_for(python.version):
        return host_compiler()
    return sysroot_compiler(sysroot, python)


def host_compiler() -> Compiler:
    return Compiler((sys.executable,), (("PATH", os.environ.get("PATH", "/usr/bin:/bin")),), sys.executable)


def sysroot_compiler(sysroot: Sysroot, python: SysrootPython) -> Compiler | None:
    """The sysroot's interpreter, started by the sysroot's dynamic loader with the sysroot's libraries
    (--library-path, and no ld.so.cache: the build host's would name its own) and stdlib (PYTHONHOME). It
    runs only on the build host's architecture; None, with the reason logged, when it cannot run here."""
    version = "%d.%d" % python.version
    resolver = LibraryResolver(sysroot)
    try:
        info = resolver.elf_info(python.interpreter)
        if info.identity != _host_identity():
            log.info(
                "python runtime: the sysroot's python%s is %s, not for this machine", version, info.identity.describe()
            )
            return None
        if info.interp is None:
            return None  # no dynamic loader to run it with: not how Debian builds python3
        loader = sysroot.resolve(info.interp).real
        resolver.closure([python.interpreter])  # a library it needs and the sysroot lacks: it cannot run
    except BeobootError as exc:
        log.warning("python runtime: the sysroot's python%s cannot run here: %s", version, exc.message)
        return None
    library_dirs = []
    for directory in resolver.search_dirs:
        if sysroot.exists(directory):  # through its links inside the sysroot, never out of it
            library_dirs.append(str(sysroot.host(sysroot.resolve(directory).real)))
    argv = (
        str(sysroot.host(loader)),
        "--inhibit-cache",
        "--library-path",
        ":".join(library_dirs),
        str(sysroot.host(python.interpreter)),
    )
    home = posixpath.dirname(posixpath.dirname(python.stdlib_dir))
    env = (("PYTHONHOME", str(sysroot.host(home))),)
    compiler = Compiler(argv, env, f"the sysroot's python{version} ({sysroot.host(python.interpreter)})")
    try:
        probe = _run_python(compiler, _PROBE_CHILD, "", 60)
        found_version, prefix, path = json.loads(probe.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("python runtime: the sysroot's python%s cannot run here: %s", version, exc)
        return None
    root = str(sysroot.root).rstrip("/") + "/"
    outside = [entry for entry in [prefix, *path] if entry and not entry.startswith(root)]
    if probe.returncode != 0 or tuple(found_version) != python.version or outside:
        log.warning(
            "python runtime: the sysroot's python%s ran as %s with %s outside the sysroot; not used",
            version,
            found_version,
            outside,
        )
        return None
    return compiler


def _host_identity() -> ElfIdentity:
    with open_regular(Path(os.path.realpath(sys.executable))) as f:
        return parse_identity(f.read(64), sys.executable)[0]


def _run_python(
    compiler: Compiler, code: str, stdin: str, timeout: float, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    # PYTHONHASHSEED=0: frozenset constants are marshalled in hash order (see _COMPILE_CHILD)
    return subprocess.run(
        [*compiler.argv, "-S", "-s", "-c", code],
        input=stdin,
        capture_output=True,
        text=True,
        env={**dict(compiler.env), "PYTHONHASHSEED": "0"},
        timeout=timeout,
        cwd=cwd,
    )


# Runs in a fresh interpreter: marshal sets FLAG_REF and picks interned string codes from the refcounts
# and interning state of the process that compiles (bpo-34093), and frozenset constants follow string
# hashes. A clean child with PYTHONHASHSEED=0 and the same job list gives the same bytes on every build;
# compiling inside the caller's process (pytest, the CLI) gives bytes that depend on what it imported.
_COMPILE_CHILD = """
import ast, importlib.util, json, sys
from importlib._bootstrap_external import _code_to_hash_pyc

def without_docstrings(tree):
    # what the compiler leaves out at -OO, without -O's removal of assert statements
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            text = first.value.value if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) else 0
            if isinstance(text, str):
                node.body = node.body[1:] or [ast.copy_location(ast.Pass(), first)]
    return tree

for source, target, display, strip in json.load(sys.stdin):
    with open(source, "rb") as f:
        data = f.read()
    try:
        code = compile(without_docstrings(ast.parse(data, display)) if strip else data, display, "exec",
                       dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError) as exc:
        print(source + ": " + " ".join(str(exc).split()), file=sys.stderr)
        sys.exit(1)
    with open(target, "wb") as f:
        f.write(_code_to_hash_pyc(code, importlib.util.source_hash(data), False))
"""
COMPILE_TIMEOUT = 600  # seconds for every module of the runtime; it takes about one


@dataclass(frozen=True)
class CompileJob:
    source: Path  # the file to read, on this host
    display: str  # co_filename: where the module is in the image, never a build-host path
    strip_docstrings: bool = False  # a sysroot module: its docstrings are bytes nothing in the image reads


def compile_modules(jobs: list[CompileJob], scratch: Path, compiler: Compiler | None = None) -> list[bytes]:
    """Unchecked-hash .pyc (PEP 552) for each job, as py_compile writes them: no source mtime in the bytes
    and no source check at import.

    Compiled with -X no_debug_ranges: no column positions (PEP 657), so a traceback on a node names the
    line but draws no ^^^ under the failing expression; the bytecode is the same. The positions are
    300 KB of a stage image after compression."""
    compiler = compiler or host_compiler()
    targets = [scratch / f"{index}.pyc" for index in range(len(jobs))]
    request = json.dumps(
        [(str(job.source), str(target), job.display, job.strip_docstrings) for job, target in zip(jobs, targets)]
    )
    no_ranges = dataclasses.replace(compiler, argv=(*compiler.argv, "-X", "no_debug_ranges"))
    try:
        result = _run_python(no_ranges, _COMPILE_CHILD, request, COMPILE_TIMEOUT, cwd=str(scratch))
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolError(f"compiling the agent's Python modules with {compiler.description} failed: {exc}") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise ToolError(
            f"compiling the agent's Python modules with {compiler.description} failed: {lines[-1]}; a module in "
            "the sysroot or the agent package is no Python source for this version: reinstall its package"
        )
    return [target.read_bytes() for target in targets]


def zip_member_name(module: Module) -> str:
    base = module.name.replace(".", "/")
    return f"{base}/__init__" if module.kind == ModuleKind.PACKAGE else base


def write_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of `members` whose bytes depend on nothing else. ZIP_STORED for a zip that goes into a
    compressed image: the image's compressor then sees the bytecode itself, across modules (xz makes 0.7 MB
    of stage 2's zip stored, 1.2 MB of the same zip deflated), and zipimport reads members without
    inflating them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.compress_type = compression
            info.create_system = 3  # Unix, whatever the build host is
            info.external_attr = 0o100644 << 16
            # deflating at level 1: level 9 cost 0.6 s of every cold build for 12% of the zip's size
            level = 1 if compression == zipfile.ZIP_DEFLATED else None
            archive.writestr(info, members[name], compresslevel=level)
    return buffer.getvalue()


def render_init(interpreter: str, program: str) -> bytes:
    """/init: re-exec with PYTHONHASHSEED set, then run the agent with the stage's program (a module with main).

    Without PYTHONHASHSEED the interpreter reads 24 random bytes at start-up for the hash secret:
    getrandom(GRND_NONBLOCK) fails while the kernel RNG is not ready yet, and the fallback
    /dev/urandom does not exist before devtmpfs is mounted, so start-up dies and init with it. The
    kernel command line passes PYTHONHASHSEED=0 into init's environment; the re-exec covers a command
    line without it. -S: no site (the zip has no site-packages); not -I/-E, which drop PYTHONHASHSEED.
    """
    return f"""#!{interpreter} -S
# beoboot /init: runs the agent as PID 1 (generated by beoboot.resolve.pyruntime).
import os
import sys

if "PYTHONHASHSEED" not in os.environ:
    os.environ["PYTHONHASHSEED"] = "0"
    try:
        os.execv({interpreter!r}, [{interpreter!r}, "-S", {INIT_PATH!r}, *sys.argv[1:]])
    except OSError as exc:
        print("beoboot: cannot re-exec with PYTHONHASHSEED:", exc, file=sys.stderr)

from agent.init import main
from {program} import main as program

sys.exit(main(program=program))
""".encode()


@dataclass
class RuntimeCache:
    """What the runtimes of one build share (an image's runtime is walked from its own program): the
    sysroot's interpreter and compiler, each module's imports, each module's bytecode."""

    sysroot: Sysroot
    python: SysrootPython | None = None
    compiler: Compiler | None = None
    compiler_searched: bool = False
    scanned: dict[tuple[str, Path], list[tuple[str, bool]]] = field(default_factory=dict)
    compiled: dict[CompileJob, bytes] = field(default_factory=dict)

    def interpreter(self) -> SysrootPython:
        if self.python is None:
            self.python = find_sysroot_python(self.sysroot)
        return self.python

    def find_compiler(self) -> Compiler | None:
        """The compiler, looked for once per build and only after a module graph was found: a stdlib
        module the sysroot's interpreter cannot parse is then one error naming it, not an interpreter that
        would not start."""
        python = self.interpreter()
        if not self.compiler_searched:
            self.compiler_searched = True
            self.compiler = find_compiler(self.sysroot, python)
            if self.compiler is None:
                log.warning(
                    "python runtime: build host is Python %d.%d, sysroot is %d.%d and its interpreter does not "
                    "run here: storing .py sources, not .pyc",
                    *sys.version_info[:2],
                    *python.version,
                )
            elif not host_can_compile_for(python.version):
                log.debug(
                    "python runtime: compiling for Python %d.%d with %s", *python.version, self.compiler.description
                )
        return self.compiler

    def compile(self, jobs: list[CompileJob]) -> list[bytes]:
        """Bytecode for each job, compiling only what no earlier runtime of this build compiled."""
        assert self.compiler is not None
        new = [job for job in dict.fromkeys(jobs) if job not in self.compiled]
        if new:
            with tempfile.TemporaryDirectory(prefix="beoboot-pyc-") as scratch:
                self.compiled.update(zip(new, compile_modules(new, Path(scratch), self.compiler)))
        return [self.compiled[job] for job in jobs]


def build_runtime(
    sysroot: Sysroot,
    program: str,
    packages: Mapping[str, Path],
    extra_modules: tuple[str, ...] | list[str] = (),
    cache: RuntimeCache | None = None,
) -> PythonRuntime:
    """The runtime of one image: the interpreter, and the modules /init reaches from `program`, a module of
    `packages` (the project's own, name -> directory on this host)."""
    cache = cache or RuntimeCache(sysroot)
    python = cache.interpreter()
    init_bytes = render_init(python.interpreter, program)
    graph = find_modules(sysroot, python, packages, init_bytes.decode(), tuple(extra_modules), cache.scanned)
    for name, importer in sorted(graph.missing.items()):
        log.debug("python runtime: %s (imported by %s) not found; an optional import, left out", name, importer)
    compiled = cache.find_compiler() is not None
    members: dict[str, bytes] = {}
    extensions: list[tuple[str, str]] = []
    to_compile: list[tuple[str, CompileJob]] = []
    for name, module in sorted(graph.modules.items()):
        if module.kind == ModuleKind.EXTENSION:
            assert module.origin is not None
            extensions.append((module.origin, f"python extension module {name}, imported by {module.imported_by}"))
        elif module.kind != ModuleKind.BUILTIN:
            assert module.host_path is not None
            base = zip_member_name(module)
            if compiled:
                # The sysroot's modules without docstrings, as at -OO, which the stdlib supports (160 KB of a
                # stage image); the project's own keep theirs, which its code may read.
                sysroot_module = name.partition(".")[0] not in packages
                to_compile.append((base, CompileJob(module.host_path, f"{python.zip_path}/{base}.py", sysroot_module)))
            else:
                members[base + ".py"] = _read(module.host_path)
    if to_compile:
        for (base, _), pyc in zip(to_compile, cache.compile([job for _, job in to_compile])):
            members[base + ".pyc"] = pyc
    modules = tuple(
        sorted(n for n, m in graph.modules.items() if m.kind not in (ModuleKind.EXTENSION, ModuleKind.BUILTIN))
    )
    return PythonRuntime(
        interpreter=python.interpreter,
        interpreter_links=python.interpreter_links,
        zip_path=python.zip_path,
        zip_bytes=write_zip(members, zipfile.ZIP_STORED),  # the image's compressor does better
        extensions=tuple(sorted(extensions)),
        modules=modules,
        init_path=INIT_PATH,
        init_bytes=init_bytes,
    )


def _read(path: Path) -> bytes:
    """A module file of the sysroot; NotRegularFile (an OSError) for a FIFO or device, never waited on."""
    with open_regular(path) as f:
        return f.read()
