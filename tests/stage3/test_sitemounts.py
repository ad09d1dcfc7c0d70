"""The site's mounts ([[mounts]]) as stage 3 makes them: what mount(2) is called with, labels read from
superblocks mke2fs wrote, mount points that a link would lead out of the root, and failures by name."""

import os
import shutil
import subprocess

import pytest

from agent import protocol as p
from stage3 import sitemounts
from stage3.disklabels import find_label, label_of
from stage3.sitemounts import MS_NOATIME, MS_RDONLY, MountError, mount_call, split_options


def nfs(source="master:/home", options="", kind="nfs"):
    return p.NodeMount(kind, source, "/home", options)


def call(mount, **kw):
    return mount_call(mount, master_host="10.0.2.2", client_address="10.0.2.15/24", **kw)


def test_nfs_is_v4_by_default_with_the_addresses_mount_nfs_would_add():
    made = call(nfs())
    assert (made.source, made.fstype, made.flags) == ("10.0.2.2:/home", "nfs4", 0)
    assert made.data == "vers=4,addr=10.0.2.2,clientaddr=10.0.2.15"


def test_nfs_options_are_kept_and_flag_words_become_flags():
    made = call(nfs(options="vers=4.2,ro,noatime,rsize=65536,clientaddr=10.9.9.9"))
    assert made.flags == MS_RDONLY | MS_NOATIME
    assert made.data == "vers=4.2,rsize=65536,clientaddr=10.9.9.9,addr=10.0.2.2"


def test_nfs_v3_asks_for_no_locks_as_no_statd_runs_on_the_node():
    made = call(nfs("10.1.2.3:/export/scratch", "vers=3"))
    assert (made.source, made.fstype, made.data) == ("10.1.2.3:/export/scratch", "nfs", "vers=3,addr=10.1.2.3,nolock")
    assert call(nfs("10.1.2.3:/x", "nfsvers=3,lock")).data == "nfsvers=3,lock,addr=10.1.2.3"


def test_nfs_v3_ports_named_in_the_options_reach_the_kernel_as_given():
    # the kernel then asks no portmapper (tests/integration/test_site_qemu.py mounts nfs-ganesha so)
    made = call(nfs(options="vers=3,port=20049,mountport=20050,mountproto=tcp,ro"))
    assert (made.source, made.fstype, made.flags) == ("10.0.2.2:/home", "nfs", MS_RDONLY)
    assert made.data == "vers=3,port=20049,mountport=20050,mountproto=tcp,addr=10.0.2.2,nolock"


def test_a_server_named_by_name_is_resolved_first():
    looked_up = []

    def resolve(name):
        looked_up.append(name)
        return "10.7.7.7"

    assert call(nfs("files.example:/data"), resolve=resolve).source == "10.7.7.7:/data"
    assert looked_up == ["files.example"]

    def fails(name):
        raise OSError("Name or service not known")

    with pytest.raises(MountError, match="cannot resolve 'files.example'"):
        call(nfs("files.example:/data"), resolve=fails)


def test_a_bad_nfs_source_is_refused():
    with pytest.raises(MountError, match="HOST:/PATH"):
        call(nfs("master"))


def test_tmpfs_and_labels():
    made = call(p.NodeMount("tmpfs", "tmpfs", "/scratch", "size=64m,nosuid,mode=1777"))
    assert (made.source, made.fstype, made.flags, made.data) == ("tmpfs", "tmpfs", 0x2, "size=64m,mode=1777")
    found = call(p.NodeMount("ext4", "LABEL=scratch", "/scratch"), find=lambda label: f"/dev/by-{label}")
    assert (found.source, found.fstype) == ("/dev/by-scratch", "ext4")
    with pytest.raises(MountError, match="no partition labelled 'scratch'"):
        call(p.NodeMount("ext4", "LABEL=scratch", "/scratch"), find=lambda label: None)


def test_split_options_as_mount_8():
    assert split_options("ro,rw,exec,noexec,x=1") == (0x8, ["x=1"])


@pytest.mark.skipif(shutil.which("mke2fs") is None, reason="needs e2fsprogs (build.py installs it)")
def test_labels_are_read_from_the_superblock_mke2fs_wrote(tmp_path):
    image = tmp_path / "part.img"
    image.write_bytes(b"\0" * (4 << 20))
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "scratch", str(image)], check=True)
    head = image.read_bytes()[:2048]
    assert label_of(head) == "scratch"
    assert label_of(b"\0" * 2048) is None
    xfs = bytearray(2048)
    xfs[:4], xfs[108:114] = b"XFSB", b"local\0"
    assert label_of(bytes(xfs)) == "local"
    # found among block devices as /sys/class/block lists them
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    sys_block.mkdir(), dev.mkdir()
    for name in ("vda", "vdb"):
        (sys_block / name).mkdir()
    (dev / "vda").write_bytes(b"\0" * 4096)
    os.symlink(image, dev / "vdb")
    assert find_label("scratch", str(sys_block), str(dev)) == str(dev / "vdb")
    assert find_label("other", str(sys_block), str(dev)) is None


def test_a_mount_point_behind_a_link_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "env"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "home")
    with pytest.raises(MountError, match="symbolic link"):
        sitemounts.target_dir(str(root), "/home/u")
    assert sitemounts.target_dir(str(root), "/scratch/a") == str(root) + "/scratch/a"


def test_each_failure_is_said_and_reported_by_its_target_and_the_rest_go_on(tmp_path):
    said, failed = [], []
    mounts = (
        p.NodeMount("ext4", "LABEL=none", "/data"),
        p.NodeMount("tmpfs", "tmpfs", "/scratch"),
    )
    done = sitemounts.mount_all(
        mounts,
        str(tmp_path),
        master_host="127.0.0.1",
        client_address="127.0.0.1",
        say=lambda message, level: said.append((level, message)),
        failed=failed.append,
        dry_run=True,
    )
    assert done == ["/scratch"]
    assert failed == ["/data: no partition labelled 'none' (is its disk's driver loaded?)"]
    assert ("error", "beoboot: mount /data (ext4 LABEL=none) failed: " + failed[0].split(": ", 1)[1]) in said


def test_a_mount_that_hangs_is_given_up_on(monkeypatch, tmp_path):
    import threading

    release = threading.Event()
    monkeypatch.setattr(sitemounts.syscalls, "mount", lambda *args, **kw: release.wait(5))
    failed = []
    try:
        sitemounts.mount_all(
            (p.NodeMount("tmpfs", "tmpfs", "/slow"),),
            str(tmp_path),
            master_host="",
            client_address="",
            say=lambda message, level: None,
            failed=failed.append,
            dry_run=False,
            wait=0.2,
        )
    finally:
        release.set()
    assert failed == ["/slow: no answer within 0.2 s"]
