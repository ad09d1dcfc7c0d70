"""A blank libcache disk is formatted at boot, one holding anything never is: the blank check, the decision
in stage 3's supervisor, mke2fs as the node runs it, and mke2fs in the stage 3 image only when configured.
Regular files stand in for the disk; no QEMU, no root."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import MKE2FS_PATH
from agent.schema import Stage
from beoboot import config
from beoboot.errors import ModuleError
from beoboot.image.assemble import BuildContext, assemble
from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.ldso import LibraryResolver
from beoboot.resolve.sysroot import Sysroot
from beoboot.stages import load_stage
from stage3 import supervisor

MIB = 1 << 20
EXT_MAGIC_AT = 1080  # the superblock starts at 1024; s_magic (0xEF53, little-endian) is 56 bytes into it

needs_mke2fs = pytest.mark.skipif(not os.path.exists(MKE2FS_PATH), reason=f"needs {MKE2FS_PATH} (e2fsprogs)")


def disk(tmp_path, size, marks=()):
    """A sparse file of `size` zero bytes with a 0x01 byte at each offset in `marks`."""
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in marks:
            f.seek(offset)
            f.write(b"\x01")
    return str(path)


@pytest.mark.parametrize(
    "size, marks, blank",
    [
        (8 * MIB, (), True),
        (8 * MIB, (0,), False),  # a boot sector or protective MBR
        (8 * MIB, (MIB - 1,), False),  # the last byte of the first MiB
        (8 * MIB, (8 * MIB - 1,), False),  # GPT's backup header lives in the last sectors
        (8 * MIB, (7 * MIB,), False),  # the first byte of the last MiB
        (8 * MIB, (4 * MIB,), True),  # only the ends are read: the middle of a new disk is not looked at
        (MIB + MIB // 2, (), True),  # smaller than both ends together: they overlap
        (MIB + MIB // 2, (MIB + 100,), False),
        (4096, (), True),
        (4096, (4095,), False),
    ],
)
def test_blank_means_zero_bytes_in_the_first_and_the_last_mib(tmp_path, size, marks, blank):
    assert supervisor.is_blank(disk(tmp_path, size, marks)) is blank


@needs_mke2fs
def test_mke2fs_as_the_node_runs_it_needs_no_config_file_and_makes_ext4(tmp_path, monkeypatch):
    monkeypatch.setenv("MKE2FS_CONFIG", str(tmp_path / "none"))  # the image carries no /etc/mke2fs.conf
    path = disk(tmp_path, 64 * MIB)
    assert supervisor.format_disk(path, "ext4", dry_run=False) == 64 * MIB
    assert not supervisor.is_blank(path)
    if shutil.which("dumpe2fs"):
        header = subprocess.run(["dumpe2fs", "-h", path], capture_output=True, text=True, check=True).stdout
        assert "Filesystem volume name:   beoboot" in header
        assert "extent" in header and "has_journal" in header


def test_only_ext2_3_4_are_formatted(tmp_path):
    with pytest.raises(supervisor.SupervisorError, match="makes only ext2, ext3, ext4"):
        supervisor.format_disk(disk(tmp_path, 8 * MIB), "xfs", dry_run=False)


def test_a_failed_program_is_seen_as_failed_with_pid_1s_reaper_installed():
    calls = []

    def reaper(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGCHLD, reaper)
    try:
        done = supervisor.run_without_reaper([sys.executable, "-c", "import sys; sys.exit(3)"])
        assert done.returncode == 3
        assert signal.getsignal(signal.SIGCHLD) is reaper
        assert calls == [signal.SIGCHLD]  # called once afterwards, for orphans that died meanwhile
    finally:
        signal.signal(signal.SIGCHLD, previous)


@pytest.fixture
def node(tmp_path, monkeypatch):
    """Stage 3's disk mounting with a fake mount(2) that mounts only files holding an ext2/3/4 superblock;
    the console lines said are collected in `node.lines`."""

    def mount(source, target, fstype, flags=0, data="", *, dry_run):
        with open(source, "rb") as f:
            f.seek(EXT_MAGIC_AT)
            if f.read(2) != b"\x53\xef":
                raise OSError(22, "Invalid argument")
        return "mounted"

    lines = []
    monkeypatch.setattr(supervisor.syscalls, "mount", mount)
    monkeypatch.setattr(supervisor, "say", lambda message, level="info": lines.append((level, message)))
    monkeypatch.setattr(supervisor, "DISK_MOUNT", str(tmp_path / "mnt"))
    monkeypatch.setenv("MKE2FS_CONFIG", str(tmp_path / "none"))
    return lines


@needs_mke2fs
def test_a_blank_disk_that_does_not_mount_is_formatted_and_mounted(tmp_path, node):
    path = disk(tmp_path, 64 * MIB)
    assert supervisor._mount_disk(path, "ext4", format_blank=True, dry_run=False)
    assert node == [("info", f"beoboot: libcache disk {path} was blank: formatted it as ext4 (64 MiB)")]


@pytest.mark.parametrize(
    "marks, format_blank, said",
    [
        ((0,), True, "it is not blank, so it will not be formatted; the environment root stays in RAM"),
        ((8 * MIB - 1,), True, "it is not blank, so it will not be formatted"),
        ((), False, "(is ext4 in [images.stage3] modules, and the disk formatted?); the environment root stays in RAM"),
    ],
    ids=["data-at-the-head", "data-at-the-tail", "libcache_format-never"],
)
def test_a_disk_that_is_not_blank_or_may_not_be_formatted_is_left_as_it_is(tmp_path, node, marks, format_blank, said):
    path = disk(tmp_path, 8 * MIB, marks)
    before = Path(path).read_bytes()
    assert not supervisor._mount_disk(path, "ext4", format_blank=format_blank, dry_run=False)
    assert Path(path).read_bytes() == before
    [(level, message)] = node
    assert level == "error" and message.startswith(f"beoboot: libcache disk {path}: cannot mount it as ext4: ")
    assert said in message


@pytest.fixture(scope="module")
def stage3_files():
    """The stage 3 file list for a site config, without the agent runtime (seconds to compile): whether
    mke2fs goes in depends on the stage and the config only."""
    sysroot = Sysroot("/")
    try:
        kernel = KernelModules.latest(sysroot)
    except ModuleError as exc:
        pytest.skip(str(exc))
    spec = dataclasses.replace(load_stage(Stage.SUPERVISOR), program=None)

    def files(tmp_path, site):
        (tmp_path / "site.toml").write_text("[build]\n" + site)
        cfg = config.load(tmp_path / "site.toml", environ={})
        ctx = BuildContext(config=cfg, sysroot=sysroot, kernel=kernel, libraries=LibraryResolver(sysroot))
        return assemble(spec, cfg.image("stage3"), ctx)

    return files


@needs_mke2fs
@pytest.mark.parametrize(
    "site, carried",
    [
        ("", False),  # the default: no disk, and the images do not grow
        ('libcache_disk = "/dev/vdb"\n', True),  # libcache_format = "blank" is the default
        ('libcache_disk = "/dev/vdb"\nlibcache_format = "never"\n', False),
        ('libcache_format = "blank"\n', False),  # no disk to format
    ],
)
def test_stage3_carries_mke2fs_and_its_libraries_only_when_it_may_format_a_disk(tmp_path, stage3_files, site, carried):
    files = stage3_files(tmp_path, site)
    mke2fs = Sysroot("/").resolve(MKE2FS_PATH)
    assert (mke2fs.real in files) is carried
    assert any(entry.path.endswith("/libext2fs.so.2") for entry in files.entries()) is carried
    if carried:
        assert all(link in files for link, _ in mke2fs.links)  # /sbin -> usr/sbin on a merged-/usr sysroot
        assert "libcache_format" in files[mke2fs.real].reason.text
