"""Kernel modules of one kernel in a sysroot: read the depmod indexes directly and resolve a load order.

We read the text indexes that depmod writes (`modules.dep`, `modules.alias`, `modules.builtin`,
`modules.builtin.modinfo`, `modules.softdep`) plus the `softdep`/`alias` lines of modprobe.d, and never run
modprobe or the kernel we inspect. The load order follows libkmod's probe list
(`__kmod_module_get_probe_list` in libkmod-module.c), so that it equals `modprobe --show-depends` with the
duplicates removed: for each dependency (in load order) its pre-softdeps, itself, its post-softdeps; then the
same for the module. tests/resolve/test_modules_vs_modprobe.py checks this against modprobe for every NIC alias.
"""

from __future__ import annotations

import difflib
import fnmatch
import io
import logging
import lzma
import posixpath
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from beoboot.errors import ModuleError, SysrootError, ToolError
from beoboot.regularfile import open_regular
from beoboot.resolve import modalias
from beoboot.resolve.sysroot import Sysroot

log = logging.getLogger("beoboot.resolve.kmod")

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
# libkmod reads modprobe.d from these directories; a file name in an earlier one hides the same name later.
MODPROBE_D_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d", "/lib/modprobe.d")
HINT_LIST = "`beoboot-build nics` lists the NIC drivers of this kernel"
# `build` reads the kernel version from its config, `modules` and `nics` from --kernel.
KERNEL_CHOICE = "kernel in [build] of the config (-c FILE), or --kernel VERSION for modules, nics"


def normalise_module_name(name: str) -> str:
    """The one spelling of a module name: the kernel treats `-` and `_` alike and reports `_`."""
    return name.replace("-", "_")


def module_name_from_path(path: str) -> str:
    base = posixpath.basename(path)
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return normalise_module_name(base)


def normalise_alias(alias: str) -> str:
    """libkmod's alias_normalize: `-` becomes `_`, except inside a `[...]` character class."""
    out: list[str] = []
    in_class = False
    for ch in alias:
        if ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        out.append("_" if ch == "-" and not in_class else ch)
    return "".join(out)


# -- parsers: text in, data out ---------------------------------------------------------------------


@dataclass(frozen=True)
class DepEntry:
    path: str  # as written in modules.dep: relative to the module directory, or absolute
    deps: tuple[str, ...]  # module names, in load order (the reverse of modules.dep's order)


def parse_modules_dep(text: str) -> dict[str, DepEntry]:
    """`kernel/a.ko: kernel/b.ko kernel/c.ko` -> {"a": DepEntry("kernel/a.ko", ("c", "b"))}.

    depmod lists the transitive dependencies with the deepest last; libkmod prepends each while reading,
    so the load order is the reverse.
    """
    table: dict[str, DepEntry] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, sep, rest = line.partition(":")
        if not sep:
            raise ModuleError(f"modules.dep: cannot parse line {line!r}", hint="run depmod for this kernel")
        deps = tuple(module_name_from_path(p) for p in reversed(rest.split()))
        table.setdefault(module_name_from_path(path), DepEntry(path.strip(), deps))
    return table


def parse_modules_alias(text: str) -> list[tuple[str, str]]:
    """`alias PATTERN MODULE` lines (modules.alias, modprobe.d) -> [(pattern, module)] in file order."""
    rows: list[tuple[str, str]] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            rows.append((words[1], normalise_module_name(words[2])))
    return rows


def parse_modules_builtin(text: str) -> set[str]:
    return {module_name_from_path(line.strip()) for line in text.splitlines() if line.strip()}


def parse_builtin_modinfo(data: bytes) -> dict[str, dict[str, list[str]]]:
    """modules.builtin.modinfo: NUL-separated `module.key=value` records."""
    info: dict[str, dict[str, list[str]]] = {}
    for record in data.split(b"\0"):
        text = record.decode("utf-8", "replace")
        head, eq, value = text.partition("=")
        module, dot, key = head.partition(".")
        if eq and dot:
            info.setdefault(normalise_module_name(module), {}).setdefault(key, []).append(value)
    return info


@dataclass(frozen=True)
class SoftDep:
    pattern: str  # module name, fnmatch pattern as in modprobe.d
    pre: tuple[str, ...]
    post: tuple[str, ...]
    source: str  # file it came from, for messages


def parse_softdeps(text: str, source: str) -> list[SoftDep]:
    """`softdep MODULE pre: A B post: C` lines (modules.softdep and modprobe.d syntax).

    Words before any `pre:`/`post:` are ignored, as libkmod does (modules.softdep has `softdep cifs gcm`
    lines from modules that wrote `MODULE_SOFTDEP("gcm")`; modprobe loads nothing for them).
    """
    rows: list[SoftDep] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "softdep":
            continue
        lists: dict[str, list[str]] = {"pre:": [], "post:": []}
        mode: str | None = None
        for word in words[2:]:
            if word in lists:
                mode = word
            elif mode is not None:
                lists[mode].append(word)
        rows.append(SoftDep(normalise_module_name(words[1]), tuple(lists["pre:"]), tuple(lists["post:"]), source))
    return rows


def parse_modinfo_section(data: bytes) -> dict[str, list[str]]:
    """The `.modinfo` ELF section: NUL-separated `key=value` strings; a key may repeat (alias, depends)."""
    info: dict[str, list[str]] = {}
    for record in data.split(b"\0"):
        key, eq, value = record.decode("utf-8", "replace").partition("=")
        if eq:
            info.setdefault(key, []).append(value)
    return info


def decompress_module(data: bytes, name: str) -> bytes:
    """The ELF bytes of a .ko, .ko.xz or .ko.zst file (compression recognised by magic, not by name)."""
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.decompress(data)
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        # No zstd in Python 3.11's standard library; the zstd CLI is a build dependency anyway.
        zstd = shutil.which("zstd")
        if zstd is None:
            raise ToolError(f"{name} is zstd-compressed and the zstd program is missing", hint="apt-get install zstd")
        done = subprocess.run([zstd, "-dcq"], input=data, capture_output=True, check=False)
        if done.returncode != 0:
            raise ToolError(f"zstd could not decompress {name}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout
    if data.startswith(b"\x1f\x8b"):
        import gzip

        return gzip.decompress(data)
    return data


def read_modinfo(elf: bytes, name: str) -> dict[str, list[str]]:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        section = ELFFile(io.BytesIO(elf)).get_section_by_name(".modinfo")
    except ELFError as exc:
        raise ModuleError(f"{name} is not a readable kernel module: {exc}") from None
    if section is None:
        raise ModuleError(f"{name} has no .modinfo section: not a kernel module?")
    return parse_modinfo_section(section.data())


# -- alias lookup -----------------------------------------------------------------------------------

_WILDCARD = re.compile(r"[*?\[\\]")


class AliasIndex:
    """fnmatch patterns (glibc's, as libkmod's index: beoboot.resolve.modalias) looked up quickly by their
    literal prefix.

    Matching every one of ~30000 patterns per lookup would take seconds for a few thousand NIC aliases;
    bucketing by the text before the first wildcard leaves a handful of candidates per key.
    """

    def __init__(self, rows: Iterable[tuple[str, str]]) -> None:
        self.rows = list(rows)
        self._by_prefix: dict[int, dict[str, list[int]]] = {}
        for i, (pattern, _module) in enumerate(self.rows):
            norm = normalise_alias(pattern)
            found = _WILDCARD.search(norm)
            prefix = norm[: found.start()] if found else norm
            self._by_prefix.setdefault(len(prefix), {}).setdefault(prefix, []).append(i)
        self._normalised = [normalise_alias(p) for p, _m in self.rows]

    def lookup(self, key: str) -> list[str]:
        """Modules whose pattern matches `key`, in index order (depmod's module order), no duplicates."""
        key = normalise_alias(key)
        hits: list[int] = []
        for length, buckets in self._by_prefix.items():
            for i in buckets.get(key[:length], ()) if length <= len(key) else ():
                if modalias.matches(self._normalised[i], key):
                    hits.append(i)
        return list(dict.fromkeys(self.rows[i][1] for i in sorted(hits)))


# -- the module tree of one kernel ------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleNeed:
    name: str  # normalised module name
    path: str  # sysroot-absolute path of the .ko[.xz|.zst] file
    reason: str  # "requested", "dependency of e1000e", "pre-softdep of ext4", ...
    cause: str | None  # name of the module that pulled it in, or None


@dataclass
class _Lookup:
    modules: list[str] = field(default_factory=list)
    builtin: list[str] = field(default_factory=list)


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort kernel versions naturally: 6.1.0-10 before 6.1.0-9 would be wrong."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|[^\d.\-+_~]+", version))


class KernelModules:
    def __init__(self, sysroot: Sysroot, version: str) -> None:
        self.sysroot = sysroot
        self.version = version
        self.moddir = self._find_moddir()
        self.kernel_image = self._find_kernel_image()
        self._dep = parse_modules_dep(self._read_text("modules.dep"))
        self._aliases = AliasIndex(parse_modules_alias(self._read_text("modules.alias")))
        self._builtin = parse_modules_builtin(self._read_text("modules.builtin", optional=True))
        builtin_info = self.sysroot.host(f"{self.moddir}/modules.builtin.modinfo")
        self._builtin_info = parse_builtin_modinfo(_read(builtin_info)) if builtin_info.is_file() else {}
        self._builtin_aliases = AliasIndex(
            (alias, name) for name, info in sorted(self._builtin_info.items()) for alias in info.get("alias", ())
        )
        self._builtin |= set(self._builtin_info)
        self._config_aliases, self._softdeps = self._read_config()
        self._warned: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"KernelModules({self.sysroot!r}, {self.version!r})"

    @classmethod
    def latest(cls, sysroot: Sysroot) -> KernelModules:
        """The newest kernel that has both an image in /boot and a module tree."""
        versions = [
            v
            for v in sysroot.listdir("/lib/modules") or sysroot.listdir("/usr/lib/modules")
            if sysroot.is_file(f"/boot/vmlinuz-{v}") or sysroot.is_file(f"/lib/modules/{v}/vmlinuz")
        ]
        if not versions:
            raise ModuleError(
                f"no kernel in sysroot {sysroot.root}: "
                "no version with both /boot/vmlinuz-VERSION and /lib/modules/VERSION",
                hint="install a kernel package in the sysroot, or name a version: " + KERNEL_CHOICE,
            )
        return cls(sysroot, max(versions, key=version_key))

    # -- public API --

    def module_names(self) -> list[str]:
        return sorted(self._dep)

    def is_builtin(self, name: str) -> bool:
        return normalise_module_name(name) in self._builtin

    def module_path(self, name: str) -> str:
        """Sysroot-absolute path of a loadable module's file."""
        entry = self._dep.get(normalise_module_name(name))
        if entry is None:
            raise self._unknown(name)
        return entry.path if entry.path.startswith("/") else f"{self.moddir}/{entry.path}"

    def relative_path(self, name: str) -> str:
        """Path as modules.dep writes it, e.g. kernel/drivers/net/virtio_net.ko (to classify drivers)."""
        return self._dep[normalise_module_name(name)].path

    def alias_rows(self) -> list[tuple[str, str]]:
        """(pattern, module) of every loadable module, in modules.alias order (stale rows left out)."""
        return [(pattern, module) for pattern, module in self._aliases.rows if module in self._dep]

    def builtin_alias_rows(self) -> list[tuple[str, str]]:
        return list(self._builtin_aliases.rows)

    def lookup(self, name_or_alias: str) -> list[str]:
        """Loadable modules for a name or alias (builtin ones left out); [] if unknown or only builtin."""
        return self._lookup(name_or_alias).modules

    def resolve(self, names_or_aliases: Iterable[str], reason: str = "requested") -> list[ModuleNeed]:
        """Modules to load, in load order (dependencies first), each once. Builtin modules are skipped."""
        out: dict[str, ModuleNeed] = {}
        visited: set[str] = set()
        for request in names_or_aliases:
            found = self._lookup(request)
            if not found.modules and not found.builtin:
                raise self._unknown(request)
            for name in found.builtin:
                log.debug("%s is built into kernel %s: nothing to load", name, self.version)
            for name in found.modules:
                why = reason if normalise_module_name(request) == name else f"{reason} as {request}"
                self._probe(name, why, None, out, visited)
        return list(out.values())

    def modinfo(self, name: str) -> dict[str, list[str]]:
        """The `.modinfo` fields of a module (or of a builtin one, from modules.builtin.modinfo)."""
        norm = normalise_module_name(name)
        if norm not in self._dep:
            if norm in self._builtin_info:
                return {k: list(v) for k, v in self._builtin_info[norm].items()}
            found = self._lookup(name).modules
            if len(found) != 1:
                raise self._unknown(name)
            norm = found[0]
        path = self.module_path(norm)
        try:
            raw = _read(self.sysroot.host(self.sysroot.resolve(path).real))
        except (OSError, SysrootError) as exc:
            raise ModuleError(
                f"cannot read module {norm} at {path}: {exc}", hint="reinstall the kernel package"
            ) from None
        return read_modinfo(decompress_module(raw, path), path)

    # -- load order (libkmod's probe list) --

    def _probe(self, name: str, reason: str, cause: str | None, out: dict[str, ModuleNeed], visited: set[str]) -> None:
        if name in visited:
            return
        visited.add(name)
        for dep in self._dep[name].deps:
            if dep in self._dep:  # a dependency that is builtin in this kernel has nothing to load
                self._place(dep, f"dependency of {name}", name, out, visited)
        self._place(name, reason, cause, out, visited)

    def _place(self, name: str, reason: str, cause: str | None, out: dict[str, ModuleNeed], visited: set[str]) -> None:
        pre, post = self._softdeps_of(name)
        for soft in pre:
            self._probe(soft, f"pre-softdep of {name}", name, out, visited)
        if name not in out:
            out[name] = ModuleNeed(name, self.module_path(name), reason, cause)
        for soft in post:
            self._probe(soft, f"post-softdep of {name}", name, out, visited)

    def _softdeps_of(self, name: str) -> tuple[list[str], list[str]]:
        # Only the first matching softdep line counts, as in libkmod and module-init-tools.
        for soft in self._softdeps:
            if fnmatch.fnmatchcase(name, soft.pattern):
                return self._optional(soft.pre, name, soft), self._optional(soft.post, name, soft)
        return [], []

    def _optional(self, wanted: tuple[str, ...], owner: str, soft: SoftDep) -> list[str]:
        """Softdeps are optional: one the kernel lacks is a warning (as in mkosi and modprobe), not an error."""
        modules: list[str] = []
        for want in wanted:
            found = self._lookup(want)
            if not found.modules and not found.builtin and (owner, want) not in self._warned:
                self._warned.add((owner, want))
                log.warning(
                    "optional module %s (softdep of %s, %s) is not in %s", want, owner, soft.source, self.moddir
                )
            modules.extend(found.modules)
        return modules

    # -- lookup, in libkmod's order: modprobe.d aliases, module names, modules.alias, builtin --

    def _lookup(self, key: str) -> _Lookup:
        norm = normalise_alias(key)
        configured = [m for pattern, m in self._config_aliases if fnmatch.fnmatchcase(norm, normalise_alias(pattern))]
        if configured:
            return self._split_builtin(list(dict.fromkeys(configured)))
        name = normalise_module_name(key)
        if name in self._dep:
            return _Lookup([name])
        found = self._aliases.lookup(key)
        if found:
            return self._split_builtin(found)
        if name in self._builtin:
            return _Lookup([], [name])
        return _Lookup([], self._builtin_aliases.lookup(key))

    def _split_builtin(self, names: list[str]) -> _Lookup:
        return _Lookup([n for n in names if n in self._dep], [n for n in names if n not in self._dep])

    def _unknown(self, name: str) -> ModuleError:
        close = difflib.get_close_matches(normalise_module_name(name), list(self._dep), n=3, cutoff=0.75)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return ModuleError(
            f"no module or alias {name!r} in kernel {self.version} ({self.moddir} in sysroot {self.sysroot.root})",
            hint=hint + HINT_LIST,
        )

    # -- reading the sysroot --

    def _find_moddir(self) -> str:
        for base in ("/lib/modules", "/usr/lib/modules"):
            if self.sysroot.is_file(f"{base}/{self.version}/modules.dep"):
                return f"{base}/{self.version}"
        have = self.sysroot.listdir("/lib/modules") or self.sysroot.listdir("/usr/lib/modules")
        raise ModuleError(
            f"no modules.dep for kernel {self.version!r} in sysroot {self.sysroot.root} "
            f"(have: {', '.join(have) or 'none'})",
            hint="run depmod in the sysroot, or name one of those versions: " + KERNEL_CHOICE,
        )

    def _find_kernel_image(self) -> str:
        for path in (f"/boot/vmlinuz-{self.version}", f"{self.moddir}/vmlinuz"):
            if self.sysroot.is_file(path):
                return path
        return f"/boot/vmlinuz-{self.version}"  # missing: the image builder reports it when it needs the file

    def _read_text(self, name: str, optional: bool = False) -> str:
        path = self.sysroot.host(f"{self.moddir}/{name}")
        try:
            return _read(path).decode("utf-8", errors="replace")
        except OSError as exc:
            if optional and isinstance(exc, FileNotFoundError):
                return ""
            raise ModuleError(
                f"cannot read {self.moddir}/{name} in sysroot {self.sysroot.root}: {exc.strerror}",
                hint="is the kernel package installed completely? run depmod for it",
            ) from None

    def _read_config(self) -> tuple[list[tuple[str, str]], list[SoftDep]]:
        """modprobe.d files and modules.softdep, read in the order of their file names (as libkmod does)."""
        files: dict[str, str] = {}
        for directory in MODPROBE_D_DIRS:
            for name in self.sysroot.listdir(directory):
                if name.endswith(".conf") and name not in files and self.sysroot.is_file(f"{directory}/{name}"):
                    files[name] = f"{directory}/{name}"
        if self.sysroot.is_file(f"{self.moddir}/modules.softdep"):
            files.setdefault("modules.softdep", f"{self.moddir}/modules.softdep")
        aliases: list[tuple[str, str]] = []
        softdeps: list[SoftDep] = []
        for name in sorted(files):
            text = _read(self.sysroot.host(self.sysroot.resolve(files[name]).real)).decode(errors="replace")
            softdeps.extend(parse_softdeps(text, files[name]))
            if name != "modules.softdep":
                aliases.extend(parse_modules_alias(text))
        return aliases, softdeps


def _read(path: Path) -> bytes:
    """A file of the module tree; NotRegularFile (an OSError) for a FIFO or device, never waited on."""
    with open_regular(path) as f:
        return f.read()
