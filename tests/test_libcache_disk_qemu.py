"""A node whose environment root and libcache live on a local disk (config libcache_disk), booted twice in
QEMU (TCG) with the same disk: the second boot keeps the first boot's objects, checked before use."""

import re
import shutil
import subprocess

import pytest

from master_helpers import MasterProcess, bpsh_argv, build_for_master
from servers import free_port
from test_boot_chain import stage2_node

pytestmark = pytest.mark.integration

DISK_SETTINGS = 'libcache_disk = "/dev/vda"\nlibcache_max = "300M"\n[images.stage3]\nmodules = ["virtio_blk", "ext4"]\n'


def bpsh(master, *args):
    return subprocess.run(bpsh_argv(master.bpsh_socket, *args), capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not shutil.which("mkfs.ext4"), reason="needs e2fsprogs to format the node's disk")
def test_environment_root_on_a_local_disk_keeps_its_libcache_across_a_reboot(tmp_path_factory, tmp_path):
    port = free_port()
    out = build_for_master(tmp_path_factory, port, DISK_SETTINGS)
    disk = tmp_path / "node-disk.img"
    site = tmp_path / "on-the-disk"
    (site / "site-data").mkdir(parents=True)
    (site / "site-data" / "keep.txt").write_text("the site's own data\n")
    subprocess.run(["truncate", "-s", "256M", str(disk)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(site), str(disk)], check=True)  # formatted, with a file
    drive = ["-drive", f"file={disk},if=virtio,format=raw"]
    master = MasterProcess(out, tmp_path / "nodes.db", tmp_path / "beoserv.log", port=port).start()
    try:
        kept_counts = []
        for boot in (1, 2):
            mark = len(master.log_text())
            with stage2_node(out, tmp_path, name=f"boot{boot}", extra=drive) as vm:
                vm.wait_for("beoboot: stage 3 ready: node 0 up")
                console = vm.console()
                assert "beoboot: modules loaded: virtio_blk, ext4" in console
                assert "beoboot: libcache disk /dev/vda (ext4): beoboot-env/ on it is the environment root /env" in console
                assert "environment root ready at /env (on /dev/vda, libcache up to 300 MiB)" in console
                kept = re.search(r"libcache: (\d+) objects kept from earlier boots, (\d+) damaged", console)
                kept_counts.append((int(kept.group(1)), int(kept.group(2))))
                master.wait_for_log(r"node 0 \(\S+\) job link up", timeout=60, after=mark)
                result = bpsh(master, "0", "/usr/bin/python3", "-c", "print(6*7)")
                assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr
                mounts = bpsh(master, "0", "cat", "/proc/self/mountinfo").stdout
                # the job's / is the disk's beoboot-env: "... /beoboot-env / rw,... - ext4 /dev/vda rw"
                assert re.search(r"^\S+ \S+ \S+ /beoboot-env / .* - ext4 /dev/vda ", mounts, re.M), mounts
        assert kept_counts[0] == (0, 0)  # a freshly formatted disk
        assert kept_counts[1][0] > 20 and kept_counts[1][1] == 0  # python3 and its closure, from boot 1
        # the rest of the disk is the site's: left as it was
        kept = subprocess.run(["debugfs", "-R", "cat /site-data/keep.txt", str(disk)], capture_output=True, text=True)
        assert kept.stdout == "the site's own data\n", kept.stderr
    finally:
        master.stop()
