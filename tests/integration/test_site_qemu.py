"""The node's world as the master sets it up, on one node booted in QEMU (TCG) with the real master:
/home over NFS from a real server (nfs-ganesha: this machine's kernel has no nfsd), mounted by stage 3 with
mount(2) and the kernel's NFS client before it takes jobs; a job writes there as its user and the master
reads the file. Names: n0 and master from /etc/hosts, an outside name from a name server of the test's own,
by the resolv.conf the master's config gave the node.

The node reaches the host at 10.0.2.2 through QEMU's user networking, which forwards to the host's
loopback from unprivileged ports: the export allows 127.0.0.1 with PrivilegedPort = false ("insecure").
The node runs no NFSv4 id mapper (nfsidmap): owners must travel as numbers, as the kernel's nfsd sends
them for sec=sys by default and nfs-ganesha with Only_Numeric_Owners. Nothing on the host is changed: the
export is a directory of the test's, the servers its own processes.

The same export is mounted twice more over NFSv3: at the fixed ports given in the mount's options (port=,
mountport=, mountproto=tcp: the node's kernel asks no portmapper), and with "vers=3" alone (the kernel asks
the portmapper at 10.0.2.2:111, the host's). nfs-ganesha registers v3 with rpcbind when it starts, and will
not start without one: the test starts rpcbind if none answers on 127.0.0.1:111, and stops the one it
started (which leaves in /run what rpcbind leaves on any stop: its lock, socket and warm-start files).

A local disk, virtio-blk, has an MBR partition table and an ext4 partition labelled "beoscratch", made as
an image file by the test (no loop device): stage 3 finds it by the label in its superblock and mounts it
at /scratch; its driver comes from the master (a device without one), ext4 with stage 3."""

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from master_helpers import BPSH_SCRIPT, MasterProcess, build_for_master, let_others_reach, shared_port
from nodes import node_row, stage2_node
from servers import free_port

pytestmark = pytest.mark.integration

TINYDNS = str(Path(__file__).resolve().parents[1] / "support" / "tinydns.py")
USER, UID = "nobody", 65534  # the job's user, the same on the master and (stage 3's accounts) on the node
OUTSIDE, OUTSIDE_ADDRESS = "licence.example.org", "10.20.30.40"  # an answer only, never a destination
SCRATCH_LABEL, SCRATCH_FILE = "beoscratch", "put there when the disk was made\n"
SCRATCH_START, SCRATCH_SECTORS = 2048, 16 * 2048  # the partition: from 1 MiB, 16 MiB long
GANESHA = """
NFS_CORE_PARAM {{
    Protocols = 3, 4; NFS_Port = {port}; MNT_Port = {mount_port}; Bind_Addr = 127.0.0.1; Mount_Path_Pseudo = true;
    Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false;
}}
NFSV4 {{ Graceless = true; RecoveryRoot = {state}; Only_Numeric_Owners = true; }}
EXPORT {{
    Export_Id = 1; Path = {export}; Pseudo = /home;
    Access_Type = NONE; Squash = No_Root_Squash; SecType = sys; Protocols = 3, 4; Transports = TCP;
    CLIENT {{ Clients = 127.0.0.1; Access_Type = RW; }}
    PrivilegedPort = false;
    FSAL {{ Name = VFS; }}
}}
"""


def wait_for_text(path, text, process, timeout=30):
    deadline = time.monotonic() + timeout
    while text not in (path.read_text(errors="replace") if path.exists() else ""):
        assert process.poll() is None and time.monotonic() < deadline, path.read_text() if path.exists() else ""
        time.sleep(0.1)


@pytest.fixture(scope="module")
def port():
    return shared_port()  # the session's one build for it serves this module too


def portmapper_answers():
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", 111)) == 0


@pytest.fixture(scope="module")
def portmapper():
    """rpcbind, which nfs-ganesha registers NFSv3 with: the host's if one runs, else one of the test's."""
    if portmapper_answers():
        yield
        return
    if shutil.which("rpcbind") is None:
        pytest.skip("needs rpcbind (python3 build.py setup)")
    # -f: in the foreground, a child of the test's (its -h, to bind UDP to loopback only, crashes in 1.2.6)
    server = subprocess.Popen(["rpcbind", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not portmapper_answers():
        assert server.poll() is None and time.monotonic() < deadline, "rpcbind did not start"
        time.sleep(0.1)
    try:
        yield
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def nfs_server(tmp_path_factory, portmapper):
    """nfs-ganesha serving an export of the test's own as /home (NFSv4.1 and v3), on free loopback ports;
    its home for the job's user owned by that user."""
    if shutil.which("ganesha.nfsd") is None:
        pytest.skip("needs nfs-ganesha and nfs-ganesha-vfs (python3 build.py setup)")
    work = tmp_path_factory.mktemp("nfs")
    work.chmod(0o755)
    export, state = work / "export", work / "state"
    (export / USER).mkdir(parents=True)
    state.mkdir()
    os.chown(export / USER, UID, UID)
    (export / "motd").write_text("served over NFSv3\n")
    nfs_port, mount_port = free_port(), free_port()
    conf = work / "ganesha.conf"
    conf.write_text(GANESHA.format(port=nfs_port, mount_port=mount_port, export=export, state=state))
    log = work / "ganesha.log"
    server = subprocess.Popen(
        ["ganesha.nfsd", "-F", "-f", str(conf), "-L", str(log), "-p", str(work / "ganesha.pid")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_text(log, "NFS SERVER INITIALIZED", server)
        yield export, nfs_port, mount_port
    finally:
        server.terminate()
        server.wait(20)


@pytest.fixture(scope="module")
def name_server():
    """The site's name server, the test's own: on the host's loopback port 53, which the node reaches at
    10.0.2.2 (QEMU forwards to the host's loopback)."""
    server = subprocess.Popen(
        [sys.executable, TINYDNS, "serve", "127.0.0.1", "53", f"{OUTSIDE}={OUTSIDE_ADDRESS}"], stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None and b"serving" in server.stdout.readline()
    except AssertionError:
        server.kill()
        pytest.skip("the host's loopback port 53 is taken")
    yield
    server.kill()
    server.wait()


@pytest.fixture(scope="module")
def out(tmp_path_factory, port):
    # ext4 for the local partition; its disk's driver, virtio_blk, the master sends
    return build_for_master(tmp_path_factory, port, '[images.stage3]\nmodules = ["nfsv4", "nfsv3", "ext4"]\n')


def partitioned_disk(work):
    """A disk image with an MBR partition table (one Linux partition) and, on that partition, an ext4 file
    system labelled SCRATCH_LABEL holding a file: made by mke2fs at the partition's offset, no loop device."""
    if shutil.which("mke2fs") is None:
        pytest.skip("needs e2fsprogs (python3 build.py setup)")
    disk, content = work / "scratch.img", work / "scratch"
    content.mkdir()
    (content / "hello").write_text(SCRATCH_FILE)
    with open(disk, "wb") as image:
        image.truncate((SCRATCH_START + SCRATCH_SECTORS) * 512)
        # status, first CHS (unused: LBA), type 0x83 Linux, last CHS, first sector, sectors
        entry = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", SCRATCH_START, SCRATCH_SECTORS)
        image.seek(446)
        image.write(entry + bytes(48) + b"\x55\xaa")
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", SCRATCH_LABEL, "-d", str(content)]
        + ["-E", f"offset={SCRATCH_START * 512}", str(disk), f"{SCRATCH_SECTORS // 2}k"],
        check=True,
    )
    return disk


@pytest.fixture(scope="module")
def node(out, port, nfs_server, name_server, tmp_path_factory):
    export, nfs_port, mount_port = nfs_server
    work = tmp_path_factory.mktemp("qemu-site")
    config = work / "beoserv.toml"
    config.write_text(
        'dns_servers = ["10.0.2.2"]\n'
        '[[mounts]]\ntype = "nfs"\nsource = "master:/home"\ntarget = "/home"\n'
        f'options = "vers=4.1,port={nfs_port}"\n'
        '[[mounts]]\ntype = "nfs"\nsource = "master:/home"\ntarget = "/home-v3"\n'
        f'options = "vers=3,port={nfs_port},mountport={mount_port},mountproto=tcp,ro"\n'
        '[[mounts]]\ntype = "nfs"\nsource = "master:/home"\ntarget = "/home-v3-portmapper"\noptions = "vers=3,ro"\n'
        f'[[mounts]]\ntype = "ext4"\nsource = "LABEL={SCRATCH_LABEL}"\ntarget = "/scratch"\n'
        '[[mounts]]\ntype = "ext4"\nsource = "LABEL=nowhere"\ntarget = "/data"\n'
    )
    master = MasterProcess(out, work / "nodes.db", work / "beoserv.log", config=config, port=port).start()
    disk = partitioned_disk(work)
    vm = stage2_node(out, work, extra=["-drive", f"file={disk},if=virtio,format=raw"])
    with vm:
        vm.wait_for("beoboot: stage 3 ready: node 0 up")
        master.wait_for_log(r"node 0 \(\S+\) job link up", timeout=60)
        let_others_reach(master.bpsh_socket)
        yield master, export, vm
    master.stop()


def bpsh_as_user(master, *args):
    return subprocess.run(
        # the system's Python, which the user may run (the test's may be in root's home)
        ["/usr/bin/python3", "-IS", BPSH_SCRIPT, "--socket", str(master.bpsh_socket), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        user=UID,
        group=UID,
        extra_groups=[],
    )


def test_a_job_writes_into_home_over_nfs_as_its_user_and_the_master_reads_it(node):
    master, export, vm = node
    assert "mounted /home (nfs master:/home) at /home" in vm.console()
    script = f"id -u; echo written on the node > /home/{USER}/hello; stat -c %u /home/{USER}/hello"
    done = bpsh_as_user(master, "0", "sh", "-c", script)
    assert (done.returncode, done.stdout) == (0, f"{UID}\n{UID}\n"), done.stderr
    written = export / USER / "hello"
    assert written.read_text() == "written on the node\n"
    assert written.stat().st_uid == UID  # as the user, not root: the server saw the job's uid
    refused = bpsh_as_user(master, "0", "sh", "-c", "echo x > /home/not-mine")
    assert refused.returncode != 0 and not (export / "not-mine").exists()  # the export's root is root's


@pytest.mark.parametrize("target", ["/home-v3", "/home-v3-portmapper"])
def test_a_job_reads_the_export_over_nfsv3(node, target):
    """At the ports the options name, and at those the node's kernel asked the server's portmapper for."""
    master, _, vm = node
    assert f"mounted {target} (nfs master:/home) at {target}" in vm.console()
    done = bpsh_as_user(master, "0", "sh", "-c", f"cat {target}/motd; grep ' {target} ' /proc/self/mounts")
    assert done.returncode == 0, done.stderr
    motd, mounted = done.stdout.splitlines()
    assert motd == "served over NFSv3"
    fields = mounted.split()
    options = fields[3].split(",")
    assert fields[2] == "nfs" and "vers=3" in options and "ro" in options, mounted  # v3, not nfs4


def test_a_job_reads_a_local_partition_found_by_its_label(node):
    master, _, vm = node
    console = vm.console()
    assert f"mounted /scratch (ext4 LABEL={SCRATCH_LABEL}) at /scratch" in console
    done = bpsh_as_user(master, "0", "sh", "-c", "cat /scratch/hello; grep ' /scratch ' /proc/self/mounts")
    assert done.returncode == 0, done.stderr
    text, mounted = done.stdout.split("\n", 1)
    assert text + "\n" == SCRATCH_FILE
    assert mounted.split()[:3] == ["/dev/vda1", "/scratch", "ext4"], mounted  # the partition, not the disk


def test_a_missing_partition_is_reported_by_name(node):
    master, _, vm = node
    assert "mount /data (ext4 LABEL=nowhere) failed: no partition labelled 'nowhere'" in vm.console()
    assert [f.split(":")[0] for f in node_row(master, 0)["mount_failures"]] == ["/data"]


def test_a_job_resolves_nodes_and_the_master_from_files_and_other_names_by_dns(node):
    master, _, _ = node
    done = bpsh_as_user(master, "0", "sh", "-c", f"cat /etc/resolv.conf; getent hosts n0 master {OUTSIDE}")
    assert done.returncode == 0, done.stderr
    assert "nameserver 10.0.2.2\n" in done.stdout
    found = {line.split()[1]: line.split()[0] for line in done.stdout.splitlines() if line[:1].isdigit()}
    assert found["master"] == "10.0.2.2" and found["n0"].startswith("10.0.2.")
    assert found[OUTSIDE] == OUTSIDE_ADDRESS
