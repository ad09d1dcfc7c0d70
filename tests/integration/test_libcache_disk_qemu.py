"""A node whose environment root and libcache live on a local disk (config libcache_disk), booted in QEMU
(TCG): a disk formatted by the site is used as it is, its data left alone; a blank disk is formatted at the
first boot, and the second boot with the same disk keeps the first boot's objects, checked before use."""

import re
import shutil
import subprocess

import pytest
from master_helpers import MasterProcess, bpsh_argv, build_for_master
from nodes import stage2_node
from servers import free_port

pytestmark = pytest.mark.integration

DISK_SETTINGS = 'libcache_disk = "/dev/vda"\nlibcache_max = "300M"\n[images.stage3]\nmodules = ["virtio_blk", "ext4"]\n'
FORMATTED = "beoboot: libcache disk /dev/vda was blank: formatted it as ext4 (256 MiB)"


def bpsh(master, *args):
    return subprocess.run(bpsh_argv(master.bpsh_socket, *args), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def disk_build(tmp_path_factory):
    """One build for both tests (libcache_format is "blank" by default): its output and its master's port."""
    port = free_port()
    return build_for_master(tmp_path_factory, port, DISK_SETTINGS), port


@pytest.fixture
def master(disk_build, tmp_path):
    out, port = disk_build
    master = MasterProcess(out, tmp_path / "nodes.db", tmp_path / "beoserv.log", port=port).start()
    yield master
    master.stop()


def boot_with_disk(out, master, tmp_path, disk, name):
    """Boot node 0 with `disk` as /dev/vda, check that its environment root is on the disk and a job runs
    there; its console, and (objects kept from earlier boots, damaged ones) from the libcache's line."""
    mark = len(master.log_text())
    with stage2_node(out, tmp_path, name=name, extra=["-drive", f"file={disk},if=virtio,format=raw"]) as vm:
        vm.wait_for("beoboot: stage 3 ready: node 0 up")
        console = vm.console()
        assert "beoboot: modules loaded: virtio_blk, ext4" in console
        assert "beoboot: libcache disk /dev/vda (ext4): beoboot-env/ on it is the environment root /env" in console
        assert "environment root ready at /env (on /dev/vda, libcache up to 300 MiB)" in console
        kept = re.search(r"libcache: (\d+) objects kept from earlier boots, (\d+) damaged", console)
        master.wait_for_log(r"node 0 \(\S+\) job link up", timeout=60, after=mark)
        result = bpsh(master, "0", "/usr/bin/python3", "-c", "print(6*7)")
        assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr
        mounts = bpsh(master, "0", "cat", "/proc/self/mountinfo").stdout
        # the job's / is the disk's beoboot-env: "... /beoboot-env / rw,... - ext4 /dev/vda rw"
        assert re.search(r"^\S+ \S+ \S+ /beoboot-env / .* - ext4 /dev/vda ", mounts, re.M), mounts
    return console, (int(kept.group(1)), int(kept.group(2)))


@pytest.mark.skipif(not shutil.which("mkfs.ext4"), reason="needs e2fsprogs to format the node's disk")
def test_a_disk_formatted_by_the_site_is_used_as_it_is_and_its_data_left_alone(disk_build, master, tmp_path):
    disk = tmp_path / "node-disk.img"
    site = tmp_path / "on-the-disk"
    (site / "site-data").mkdir(parents=True)
    (site / "site-data" / "keep.txt").write_text("the site's own data\n")
    subprocess.run(["truncate", "-s", "256M", str(disk)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(site), str(disk)], check=True)  # formatted, with a file
    console, kept = boot_with_disk(disk_build[0], master, tmp_path, disk, "formatted")
    assert "was blank" not in console  # it mounted: never formatted again
    assert kept == (0, 0)  # a fresh beoboot-env
    kept = subprocess.run(["debugfs", "-R", "cat /site-data/keep.txt", str(disk)], capture_output=True, text=True)
    assert kept.stdout == "the site's own data\n", kept.stderr


def test_a_blank_disk_is_formatted_at_the_first_boot_and_keeps_its_libcache_across_a_reboot(
    disk_build, master, tmp_path
):
    disk = tmp_path / "node-disk.img"
    subprocess.run(["truncate", "-s", "256M", str(disk)], check=True)  # a new disk: all zeros
    first, kept_first = boot_with_disk(disk_build[0], master, tmp_path, disk, "boot1")
    assert FORMATTED in first
    assert first.index(FORMATTED) < first.index("beoboot: libcache disk /dev/vda (ext4): beoboot-env/")
    assert kept_first == (0, 0)
    second, kept_second = boot_with_disk(disk_build[0], master, tmp_path, disk, "boot2")
    assert "was blank" not in second
    assert kept_second[0] > 20 and kept_second[1] == 0  # python3 and its closure, from boot 1
    master.wait_for_log(f"info {re.escape(FORMATTED)}")  # said to the master too, like every console line
