"""A node booted in QEMU loses its master for 15 s (beoserv, which it reaches over user networking at
10.0.2.2, is stopped and started again): the job goes on, and all of its output arrives, once."""

import signal
import subprocess
import time

import pytest
from master_helpers import MasterProcess, bpsh_argv, build_for_master, shared_port
from nodes import stage2_node

pytestmark = pytest.mark.integration

LINES = 30  # a line a second: the job outlasts the master's absence


def test_a_qemu_nodes_job_outlives_15_s_without_its_master(tmp_path_factory):
    port = shared_port()  # the session's one build for it serves this test too
    out = build_for_master(tmp_path_factory, port)
    work = tmp_path_factory.mktemp("qemu-reattach")
    master = MasterProcess(out, work / "nodes.db", work / "beoserv.log", port=port).start()
    vm = stage2_node(out, work)
    try:
        with vm:
            vm.wait_for("beoboot: stage 3 ready: node 0 up")
            master.wait_for_log(r"node 0 \(\S+\) job link up", timeout=60)
            script = f"i=0; while [ $i -lt {LINES} ]; do echo line $i; i=$((i+1)); sleep 1; done"
            job = subprocess.Popen(
                bpsh_argv(master.bpsh_socket, "--cache", "/usr/bin/sleep", "0", "sh", "-c", script),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            first = job.stdout.readline()
            assert first == b"line 0\n", job.stderr.read()
            master.signal(signal.SIGTERM)  # the node's link drops; its heartbeats go unanswered
            master.proc.wait(10)
            master._log_file.close()
            time.sleep(15)
            master.start()
            rest, err = job.communicate(timeout=120)
            assert job.returncode == 0, err
            assert (first + rest).decode().splitlines() == [f"line {i}" for i in range(LINES)]
            assert b"reattached" in err
            vm.wait_for("job link up: 1 jobs held for the master to take back", timeout=60)
    finally:
        master.stop()
