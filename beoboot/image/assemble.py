"""Assemble the file list of one stage image: directories, devices, agent runtime, NIC drivers, binaries,
overlay and templates, each entry with the reason it is there. No bytes are written here."""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from agent.config import AGENT_CONFIG_PATH, MKE2FS_PATH, AgentConfig, NicAlias
from beoboot import __version__
from beoboot.config import DEFAULT_CONFIG_NAME, Config, ImageConfig
from beoboot.errors import ConfigError, ModuleError, UsageError
from beoboot.image.compress import decompress
from beoboot.image.filelist import FileList, Reason
from beoboot.image.firmwarefiles import add_firmware
from beoboot.resolve.kmod import KernelModules, ModuleNeed, module_name_from_path
from beoboot.resolve.ldso import LibraryResolver
from beoboot.resolve.nics import TRANSPORTS, lspci_dumps, nic_table, select_drivers
from beoboot.resolve.pyruntime import PythonRuntime, RuntimeCache, build_runtime
from beoboot.resolve.sysroot import Sysroot
from beoboot.stages import PROGRAM_PACKAGES, PROJECT_ROOT, TEMPLATES_DIR, StageSpec


@dataclass
class BuildContext:
    """What one build computes once and shares between the images."""

    config: Config
    sysroot: Sysroot
    kernel: KernelModules
    libraries: LibraryResolver
    _runtimes: dict[str, PythonRuntime] = field(default_factory=dict)
    _runtime_cache: RuntimeCache | None = None
    _nic_table: list[NicAlias] | None = None
    # every build-host file or directory listing the build read, for the rebuild cache
    inputs: set[str] = field(default_factory=set)

    def runtime(self, program: str) -> PythonRuntime:
        """The Python runtime of the images whose agent runs `program`: only what it imports."""
        if program not in self._runtimes:
            packages = {name: PROJECT_ROOT / name for name in PROGRAM_PACKAGES}
            self._runtime_cache = self._runtime_cache or RuntimeCache(self.sysroot)
            self._runtimes[program] = build_runtime(
                self.sysroot, program, packages, self.config.python_modules, self._runtime_cache
            )
        return self._runtimes[program]

    @property
    def nic_table(self) -> list[NicAlias]:
        if self._nic_table is None:
            self._nic_table = nic_table(self.kernel)
        return self._nic_table


def assemble(spec: StageSpec, image: ImageConfig, ctx: BuildContext) -> FileList:
    files = FileList()
    base = Reason(f"{spec.stage.value} layout")
    for directory in spec.directories:
        files.add_dir(directory, base, mode=0o1777 if directory == "/tmp" else 0o755)
    if spec.devices:
        # The kernel opens /dev/console for init's stdio before anything can mount devtmpfs.
        files.add_chardev("/dev/console", 5, 1, Reason("console for init before devtmpfs"), mode=0o600)
        files.add_chardev("/dev/null", 1, 3, Reason("null device before devtmpfs"), mode=0o666)

    elf_roots: dict[str, Reason] = {}
    load_order: dict[str, tuple[str, ...]] = {}
    modules_at_start: list[str] = []
    drivers: list[str] = []
    if spec.nic_drivers and image.drivers:  # first: a site's lspci dump that says nothing usable fails at once
        with _config_key(ctx.config, f"images.{spec.stage.value}.drivers"):
            ctx.inputs.update(str(dump) for dump in lspci_dumps(image.drivers, config_dir(ctx.config)))
            drivers = select_drivers(ctx.kernel, list(image.drivers), config_dir(ctx.config))
    if spec.program:
        _add_runtime(files, ctx.runtime(spec.program), ctx.sysroot, elf_roots)
    # A transport (virtio_pci for virtio_net) claims the PCI function: without it the driver never binds.
    known = set(ctx.kernel.module_names())
    drivers += [t.module for t in TRANSPORTS if t.carries in drivers and t.module in known and t.module not in drivers]
    if drivers:
        _add_modules(files, ctx, drivers, load_order, nic_reason=_nic_reasons(ctx.nic_table))
    if image.modules:
        with _config_key(ctx.config, f"images.{spec.stage.value}.modules"):
            modules_at_start = _add_modules(files, ctx, list(image.modules), load_order, nic_reason={})
    # a NIC such as bnx2x or r8169 gets no link without its firmware
    files.missing_firmware = add_firmware(
        files, ctx.kernel, (module_name_from_path(path) for paths in load_order.values() for path in paths)
    )
    if spec.program and ctx.config.debug_shell:
        _add_debug_shell(files, ctx, elf_roots)
    for binary in spec.binaries:
        elf_roots[files.add_from_sysroot(ctx.sysroot, binary, Reason(f"{spec.stage.value} program"))] = Reason(
            f"{spec.stage.value} program"
        )
    if spec.formats_libcache_disk and ctx.config.libcache_disk and ctx.config.libcache_format == "blank":
        _add_disk_formatter(files, ctx, elf_roots)
    if elf_roots:
        _add_elf_closure(files, ctx, elf_roots)
    if spec.program:
        agent_config = AgentConfig(
            version=__version__,
            stage=spec.stage.value,
            program=spec.program,
            kernel_version=ctx.kernel.version,
            nic_table=tuple(row for row in ctx.nic_table if row.module in set(drivers)),
            module_load_order=load_order,
            modules_at_start=tuple(modules_at_start),
            master_url=ctx.config.master_url,
            master_timeout=ctx.config.master_timeout,
            master_lost=ctx.config.master_lost,
            libcache_max_bytes=ctx.config.libcache_max,
            libcache_disk=ctx.config.libcache_disk,
            libcache_fstype=ctx.config.libcache_fstype,
            libcache_format=ctx.config.libcache_format,
        )
        files.add_bytes(AGENT_CONFIG_PATH, agent_config.to_json().encode(), Reason("agent config"))
    if spec.overlay is not None and spec.overlay.is_dir():
        _add_overlay(files, spec.overlay, Reason(f"{spec.stage.value} overlay"))
    for template in spec.templates:
        files.add_bytes(template.dest, _render(template.template, spec, ctx), Reason(f"template {template.template}"))
    return files


def _add_runtime(files: FileList, runtime: PythonRuntime, sysroot: Sysroot, elf_roots: dict[str, Reason]) -> None:
    interpreter = Reason("python interpreter for the agent")
    real = files.add_from_sysroot(sysroot, runtime.interpreter, interpreter)
    elf_roots[real] = interpreter
    for link in runtime.interpreter_links:
        target = posixpath.relpath(runtime.interpreter, posixpath.dirname(link))
        files.add_symlink(link, target, Reason("python interpreter name", cause=real))
    files.add_bytes(runtime.zip_path, runtime.zip_bytes, Reason("agent stdlib"))
    for path, why in runtime.extensions:
        reason = Reason(f"agent extension module: {why}")
        elf_roots[files.add_from_sysroot(sysroot, path, reason)] = reason
    files.add_bytes(runtime.init_path, runtime.init_bytes, Reason("agent entry (init)"), mode=0o755)


DEBUG_SHELL = "/bin/busybox"


def _add_debug_shell(files: FileList, ctx: BuildContext, elf_roots: dict[str, Reason]) -> None:
    """busybox as /bin/sh, only when [build] debug_shell asks: nodes carry no shell by default."""
    if not ctx.sysroot.exists(DEBUG_SHELL):
        raise ConfigError(
            f"[build] debug_shell = true, but sysroot {ctx.sysroot.root} has no {DEBUG_SHELL}",
            hint="install busybox in the sysroot (apt-get install busybox), or set debug_shell = false",
        )
    reason = Reason("debug shell ([build] debug_shell)")
    elf_roots[files.add_from_sysroot(ctx.sysroot, DEBUG_SHELL, reason)] = reason
    # in the real directory: on a merged-/usr sysroot /bin is itself a link (to usr/bin)
    shell = ctx.sysroot.resolve("/bin").real + "/sh"
    if shell not in files:
        files.add_symlink(shell, "busybox", Reason("debug shell ([build] debug_shell)", cause=DEBUG_SHELL))


def _add_disk_formatter(files: FileList, ctx: BuildContext, elf_roots: dict[str, Reason]) -> None:
    """mke2fs, with which a stage (formats_libcache_disk) formats a blank libcache disk: added only when the
    config asks, so the default images carry none. Without /etc/mke2fs.conf it uses its built-in profile,
    the same as Debian's."""
    if not ctx.sysroot.exists(MKE2FS_PATH):
        raise ConfigError(
            f'[build] libcache_format = "blank", but sysroot {ctx.sysroot.root} has no {MKE2FS_PATH}, with which '
            "nodes format a blank libcache_disk",
            hint='install e2fsprogs in the sysroot (apt-get install e2fsprogs), or set libcache_format = "never"',
        )
    reason = Reason("formats a blank libcache disk ([build] libcache_format)")
    elf_roots[files.add_from_sysroot(ctx.sysroot, MKE2FS_PATH, reason)] = reason


def _add_elf_closure(files: FileList, ctx: BuildContext, roots: dict[str, Reason]) -> None:
    for need in ctx.libraries.closure(sorted(roots), dlopen=ctx.config.dlopen):
        if need.needed_by is None and need.path in roots:
            continue
        why = f"needed by {need.needed_by}" if need.needed_by else "loaded with dlopen() (config build.dlopen)"
        files.add_from_sysroot(ctx.sysroot, need.path, Reason(why, cause=need.needed_by))


def _nic_reasons(table: list[NicAlias]) -> dict[str, str]:
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for row in table:
        first.setdefault(row.module, row.pattern)
        count[row.module] = count.get(row.module, 0) + 1
    return {m: f"NIC driver for {p}" + (f" (+{count[m] - 1} more)" if count[m] > 1 else "") for m, p in first.items()}


def config_dir(config: Config) -> Path:
    """Where a relative path in the config (an lspci dump) is found: beside the config file, or, for the
    embedded default, in the current directory."""
    return Path.cwd() if config.origin == DEFAULT_CONFIG_NAME else Path(config.origin).absolute().parent


@contextlib.contextmanager
def _config_key(config: Config, key: str) -> Iterator[None]:
    """A module or driver the kernel lacks, or an lspci dump that says nothing usable, came from the config:
    the error names the file and the key."""
    try:
        yield
    except (ModuleError, ConfigError, UsageError) as exc:
        raise type(exc)(f"{config.origin}: {key}: {exc.message}", hint=exc.hint) from None


def _add_modules(
    files: FileList,
    ctx: BuildContext,
    wanted: list[str],
    load_order: dict[str, tuple[str, ...]],
    nic_reason: dict[str, str],
) -> list[str]:
    """Add modules with their dependencies; record each one's load order for the agent. Returns the names."""
    names = []
    for name in wanted:
        needs = ctx.kernel.resolve([name])
        if not needs:
            continue  # built into the kernel
        paths = []
        for need in needs:
            paths.append(_add_module_file(files, ctx, need, nic_reason.get(need.name)))
        target = needs[-1].name
        load_order[target] = tuple(paths)
        names.append(target)
    return names


def _add_module_file(files: FileList, ctx: BuildContext, need: ModuleNeed, nic_reason: str | None) -> str:
    """Modules go in uncompressed: the whole image is compressed anyway, and finit_module needs no decompressor."""
    reason = Reason(nic_reason or need.reason, cause=need.cause)
    for suffix in (".xz", ".zst", ".gz"):
        if need.path.endswith(suffix):
            resolved = ctx.sysroot.resolve(need.path)
            for link, target in resolved.links:
                files.add_symlink(link, target, Reason(f"link on the way to {resolved.real}"))
            plain = resolved.real[: -len(suffix)]
            if plain not in files:
                files.add_bytes(plain, decompress(ctx.sysroot.host(resolved.real).read_bytes()), reason)
            return plain
    return files.add_from_sysroot(ctx.sysroot, need.path, reason)


def _add_overlay(files: FileList, overlay: Path, reason: Reason) -> None:
    for directory, subdirs, names in os.walk(overlay):
        subdirs.sort()
        rel = os.path.relpath(directory, overlay)
        for name in sorted(names):
            source = Path(directory, name)
            dest = "/" + os.path.normpath(os.path.join(rel, name))
            if source.is_symlink():
                files.add_symlink(dest, os.readlink(source), reason)
            else:
                files.add_file(dest, source, reason)


def _render(template: str, spec: StageSpec, ctx: BuildContext) -> bytes:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    text = env.get_template(template).render(version=__version__, stage=spec, config=ctx.config)
    return text.encode()
