"""`beoboot-build build`: the four stage images, the kernel and the manifest, atomically, with a rebuild
cache keyed on input content."""

from __future__ import annotations

import dataclasses
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from beoboot import __version__
from beoboot.artifacts import media
from beoboot.config import Config
from beoboot.errors import BudgetError
from beoboot.image.archive import PartCompressor, write_image
from beoboot.image.assemble import BuildContext, assemble, config_dir
from beoboot.image.cache import inputs_key
from beoboot.image.compress import Compression
from beoboot.image.filelist import Entry, FileList, Kind
from beoboot.image.manifest import MANIFEST_NAME, Artifact, Manifest, file_records, load_manifest, sha256_file
from beoboot.image.outputs import Staging, remove_stale_unfinished
from beoboot.image.partcache import PartCache, cache_dir
from beoboot.log import log, step
from beoboot.resolve import firmware
from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.ldso import LibraryResolver
from beoboot.resolve.nics import lspci_dumps
from beoboot.resolve.sysroot import Sysroot
from beoboot.stages import PROJECT_ROOT, all_stages

KERNEL_NAME = "vmlinuz"
KERNEL_INDEXES = ("modules.dep", "modules.alias", "modules.builtin", "modules.softdep", "modules.order")
SUFFIX = {
    Compression.GZIP: ".gz",
    Compression.XZ: ".xz",
    Compression.ZSTD: ".zst",
    Compression.LZ4: ".lz4",
    Compression.NONE: "",
}


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    up_to_date: bool  # nothing was rebuilt: the inputs had the content of the last build


def image_file_name(stage: str, compression: Compression) -> str:
    return f"{stage}.cpio{SUFFIX[compression]}"


def build(config: Config, outdir: Path) -> BuildResult:
    outdir = Path(outdir).absolute()
    config_key = _config_key(config)
    previous = load_manifest(outdir)
    if previous is not None and _up_to_date(previous, outdir, config_key):
        log.info("up to date: %s (inputs unchanged since the last build)", outdir)
        remove_stale_unfinished(outdir)  # what a build killed since then left
        return BuildResult(previous, up_to_date=True)

    sysroot = Sysroot(config.sysroot)
    with step("scan kernel modules"):
        kernel = KernelModules.latest(sysroot) if config.kernel == "auto" else KernelModules(sysroot, config.kernel)
    ctx = BuildContext(config=config, sysroot=sysroot, kernel=kernel, libraries=LibraryResolver(sysroot))
    manifest = Manifest(__version__, kernel.version, config.source_date_epoch)
    inputs: set[str] = set()

    with Staging(outdir) as staging:
        kernel_source = sysroot.host(sysroot.resolve(kernel.kernel_image).real)
        shutil.copyfile(kernel_source, staging.path / KERNEL_NAME)
        manifest.artifacts.append(_artifact("kernel", "kernel", staging.path / KERNEL_NAME, None))
        inputs.add(str(kernel_source))
        planned = []
        for spec in all_stages():
            with step(f"assemble {spec.stage}"):
                planned.append((spec, config.image(spec.stage), assemble(spec, config.image(spec.stage), ctx)))
        # Writing is cpio packing in libarchive and compression, both outside the GIL: the images are
        # written side by side, and their parts compressed one per core, each distinct part once.
        cores = os.cpu_count() or 1
        with (
            step("write images"),
            ThreadPoolExecutor(cores) as compressing,
            ThreadPoolExecutor(len(planned)) as writing,
        ):
            compressor = PartCompressor(compressing, PartCache(cache_dir()))
            writes = [
                writing.submit(
                    write_image,
                    files,
                    staging.path / image_file_name(spec.stage, image.compression),
                    image.compression,
                    config.source_date_epoch,
                    shared=_from_sysroot if spec.unpacked_by is None else None,
                    compressor=compressor,
                )
                for spec, image, files in planned
            ]
            for write in writes:
                write.result()
        for spec, image, files in planned:
            name = image_file_name(spec.stage, image.compression)
            artifact = _artifact("image", spec.stage, staging.path / name, image.compression)
            if artifact.size > image.budget:
                raise _over_budget(spec.stage, artifact.size, image.budget, files)
            log.info("  %s: %d files, %.1f MiB", name, len(files), artifact.size / 2**20)
            manifest.artifacts.append(artifact)
            manifest.images[spec.stage] = file_records(files, sysroot)
            if files.missing_firmware:
                inputs.update(firmware.watched_directories(sysroot, files.missing_firmware))
                manifest.missing_firmware[spec.stage] = [
                    {"module": fw.module, "name": fw.name, "package": fw.package} for fw in files.missing_firmware
                ]
            inputs.update(_sysroot_sources(files))
        with step("write boot artifacts"):
            images = {a.name: staging.path / a.path for a in manifest.artifacts}
            hashes = {a.name: a.sha256 for a in manifest.artifacts}
            for written in media.write_all(config, staging.path, images, hashes):
                manifest.artifacts.append(_artifact(written.kind, written.path, staging.path / written.path, None))
        inputs.update(_index_inputs(ctx))
        inputs.update(ctx.inputs)
        manifest.inputs = sorted(inputs)
        manifest.inputs_key = inputs_key(config_key, manifest.inputs)
        (staging.path / MANIFEST_NAME).write_text(manifest.to_json())
        staging.publish(MANIFEST_NAME)
    return BuildResult(manifest, up_to_date=False)


def _config_key(config: Config) -> str:
    """The config's part of the rebuild key: its values, and where its relative lspci dumps are (the same
    config in another directory names other files)."""
    dumps = sorted({str(d) for image in config.images.values() for d in lspci_dumps(image.drivers, config_dir(config))})
    return dataclasses.replace(config, origin="").to_json() + "\n".join(dumps)


def _artifact(kind: str, name: str, path: Path, compression: Compression | None) -> Artifact:
    return Artifact(
        kind=kind,
        name=name,
        path=str(path.relative_to(path.parent if kind in ("kernel", "image") else _staging_root(path, name))),
        size=path.stat().st_size,
        sha256=sha256_file(path),
        compression=compression.value if compression else None,
    )


def _staging_root(path: Path, name: str) -> Path:
    """The build directory of an artifact whose name is its path relative to it (pxe/vmlinuz)."""
    root = path
    for _ in Path(name).parts:
        root = root.parent
    return root


def _up_to_date(previous: Manifest, outdir: Path, config_key: str) -> bool:
    if previous.beoboot_version != __version__ or not previous.inputs_key:
        return False
    for art in previous.artifacts:
        path = outdir / art.path
        if not path.is_file() or path.stat().st_size != art.size or sha256_file(path) != art.sha256:
            return False
    return inputs_key(config_key, previous.inputs) == previous.inputs_key


def _sysroot_sources(files: FileList) -> set[str]:
    """Build-host files read from the sysroot; the project's own files are covered by the code digest."""
    return {e.source for e in files.entries() if e.kind == Kind.FILE and _from_sysroot(e) and e.source}


def _from_sysroot(entry: Entry) -> bool:
    """A file copied from the sysroot, not one of the project's own or generated."""
    return entry.source is not None and not Path(entry.source).is_relative_to(PROJECT_ROOT)


def _index_inputs(ctx: BuildContext) -> set[str]:
    """Files and directories whose content decides what the resolvers pick, beyond the files they picked."""
    host = ctx.sysroot.host
    moddir = f"/lib/modules/{ctx.kernel.version}"
    found = {str(host(f"{moddir}/{name}")) for name in KERNEL_INDEXES}
    found |= {str(host("/boot")), str(host("/lib/modules")), str(host("/etc/ld.so.conf"))}
    found |= {str(host("/etc/ld.so.conf.d"))}
    found |= {str(p) for p in host("/etc/ld.so.conf.d").glob("*.conf")}
    found |= {str(host(d)) for d in ctx.libraries.search_dirs}
    return found


def _over_budget(stage: str, size: int, budget: int, files: FileList) -> BudgetError:
    biggest = sorted((e for e in files.entries() if e.kind == Kind.FILE), key=lambda e: -e.size())[:8]
    lines = "\n".join(f"    {e.size() / 2**20:7.2f} MiB  {e.path}  ({e.reason.text})" for e in biggest)
    return BudgetError(
        f"image {stage} is {size / 2**20:.2f} MiB compressed, over its budget of {budget / 2**20:.2f} MiB; "
        f"biggest contributors (uncompressed):\n{lines}",
        hint=f"raise [images.{stage}] budget, choose stronger compression, or carry fewer drivers",
    )
