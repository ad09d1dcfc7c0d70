"""The node's job link needs the token of the node's last registration: the real beoserv and a simulated
node, and a second machine that knows the node's MAC."""

import os
import stat
import subprocess
import urllib.request

import pytest
from master_helpers import MasterProcess, bpsh_argv, start_simnodes

from agent import protocol as p
from agent.schema import Stage
from stage3.wsclient import WebSocket, WebSocketError

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root")

MAC = "02:be:0b:00:00:00"  # stage3.simnode's first node


def register(url: str) -> p.RegisterReply:
    """Register as the node (root on the master may) and say it is up, as the node's agent does: only a
    node that is up gets jobs."""
    body = p.to_json(p.RegisterRequest(MAC, Stage.SUPERVISOR, p.Hardware(cpu_model="impostor", cpus=1), "0"))
    request = urllib.request.Request(url + p.REGISTER_PATH, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        reply = p.from_json(p.RegisterReply, response.read())
    ready = p.EventBatch(MAC, 0.0, (p.StageEvent(p.BootEvent.STAGE3_READY, 0.0, Stage.SUPERVISOR),))
    headers = {p.LINK_TOKEN_HEADER: reply.link_token}
    urllib.request.urlopen(
        urllib.request.Request(url + p.EVENTS_PATH, p.to_json(ready).encode(), headers), timeout=10
    ).close()
    return reply


def open_link(url: str, token: str | None) -> WebSocket:
    headers = {} if token is None else {p.LINK_TOKEN_HEADER: token}
    ws = WebSocket.connect(f"{url}{p.JOBS_LINK_PATH}?mac={MAC}", headers=headers)
    ws.sock.settimeout(30)  # a job that never comes fails the test, not hangs it
    return ws


def test_only_the_last_registration_gets_the_nodes_jobs(tmp_path):
    (tmp_path / "boot").mkdir()
    config = tmp_path / "beoserv.toml"
    config.write_text("job_link_wait = 1\n")  # a job whose link is lost waits so long for its node to come back
    master = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log", config).start()
    sim = None
    try:
        sim = start_simnodes(master.url, tmp_path)
        master.wait_for_log("node 0 .* job link up")
        run = [*bpsh_argv(master.bpsh_socket, "0", "/bin/true")]
        assert subprocess.run(run, timeout=30).returncode == 0  # the node's own link, with its token

        # knowing the MAC is not enough: no token, or a made-up one, is refused, and the node keeps its link
        for token in (None, "guess"):
            with pytest.raises(WebSocketError, match="403") as refused:
                open_link(master.url, token)
            assert "guess" not in str(refused.value)  # the token is a header: errors and logs never show it
        assert subprocess.run(run, timeout=30).returncode == 0
        assert stat.S_IMODE(os.stat(tmp_path / "nodes.db").st_mode) == 0o600  # the tokens are in there

        # registering as the node issues a new token: the link opened with the old one is closed at once,
        # and the node cannot open it again with its old token
        reply = register(master.url)
        assert reply.number == 0 and len(reply.link_token) >= 32
        master.wait_for_log("node 0 job link from before its registration closed")
        master.wait_for_log(r"node 0 \(02:be:0b:00:00:00\) job link refused", timeout=10)
        impostor = open_link(master.url, reply.link_token)
        try:
            master.wait_for_log(r"node 0 .* job link up", after=master.log_text().rindex("closed"))
            job = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _, frame = impostor.recv()
            start = p.decode_frame(frame)
            assert isinstance(start, p.JobStart) and start.manifest.argv == ("/bin/true",)
        finally:
            impostor.close()
        assert job.wait(30) == 255  # the link it ran on was lost, and its node did not link again
        assert b"link lost" in job.stderr.read()
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(10)
        master.stop()
