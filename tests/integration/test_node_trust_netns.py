"""A registration from another host must come from a privileged port: beoserv in one network namespace,
a "node" in another, joined by a veth pair made here (no packet leaves them)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netns import veth_pair

ROOT = Path(__file__).resolve().parents[2]
SERVER_IP, CLIENT_IP = "10.198.0.1", "10.198.0.2"  # only inside the test's namespaces

# In the node's namespace: register from an unprivileged port, from a privileged one, and as the agent
# does (agent.masterlink); prints the three answers.
CLIENT = r"""
import http.client, json, random, sys
from agent import protocol as p
from agent.masterlink import MasterLink, RegistrationRefused
from agent.schema import Stage

url = sys.argv[1]
host, port = url.split("//")[1].rstrip("/").split(":")

def register(mac, source_port):
    body = p.to_json(p.RegisterRequest(mac, Stage.SUPERVISOR, p.Hardware(), "0"))
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=("", source_port))
    conn.request("POST", p.REGISTER_PATH, body, {"Content-Type": "application/json", "Connection": "close"})
    sent_from = conn.sock.getsockname()[1]
    response = conn.getresponse()
    answer = {"status": response.status, "body": json.loads(response.read()), "source_port": sent_from}
    conn.close()
    return answer

link = MasterLink(url, "02:77:00:00:00:03", "stage3", timeout=10)
try:
    agent = {"number": link.register(attempts=1).number}
except RegistrationRefused as exc:
    agent = {"refused": str(exc)}
print(json.dumps({"unprivileged": register("02:77:00:00:00:01", 0),
                  "privileged": register("02:77:00:00:00:02", random.randrange(600, 1000)), "agent": agent}))
"""


@pytest.fixture
def namespaces():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for network namespaces")
    with veth_pair("bt", SERVER_IP, CLIENT_IP) as pair:
        yield pair.server_ns, pair.client_ns


def _in(ns, *argv, python=sys.executable, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return ["ip", "netns", "exec", ns, python, *argv], dict(cwd=ROOT, env=env, **kwargs)


def _wait_for(log: Path, pattern: str, process, timeout: float = 15.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while not (found := re.search(pattern, log.read_text(errors="replace"))):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return found


@pytest.mark.integration
def test_another_host_registers_only_from_a_privileged_port(namespaces, tmp_path):
    server_ns, client_ns = namespaces
    (tmp_path / "boot").mkdir()
    config = tmp_path / "beoserv.toml"
    config.write_text("")
    log = tmp_path / "beoserv.log"
    argv, kwargs = _in(
        server_ns,
        "-m",
        "beoboot.master.cli",
        "beoserv",
        "--root",
        str(tmp_path / "boot"),
        "--listen",
        f"{SERVER_IP}:0",
        "--db",
        str(tmp_path / "nodes.db"),
        "--config",
        str(config),
    )
    with open(log, "wb") as out:
        beoserv = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    try:
        url = _wait_for(log, rf"listening on (http://{re.escape(SERVER_IP)}:\d+)/", beoserv).group(1)

        def from_node() -> dict:
            # the system's python, standard library only, as a node image carries it (beoboot.resolve.pyruntime)
            argv, kwargs = _in(
                client_ns, "-c", CLIENT, url, python="/usr/bin/python3", capture_output=True, text=True, timeout=60
            )
            result = subprocess.run(argv, **kwargs)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        answers = from_node()
        unprivileged = answers["unprivileged"]
        assert unprivileged["status"] == 403 and unprivileged["source_port"] >= 1024
        assert f"source port {unprivileged['source_port']} is not privileged" in unprivileged["body"]["error"]
        assert "link_token" not in unprivileged["body"]
        assert answers["privileged"]["status"] == 200 and answers["privileged"]["body"]["link_token"]
        assert "number" in answers["agent"], answers["agent"]  # the agent sends from a privileged port itself
        _wait_for(log, rf"registration refused: registration from {re.escape(CLIENT_IP)}:\d+: source port", beoserv)

        # a site whose nodes are behind NAT turns the check off (SIGHUP re-reads the config)
        config.write_text("require_reserved_port = false\n")
        beoserv.send_signal(signal.SIGHUP)
        _wait_for(log, "config reloaded", beoserv)
        assert from_node()["unprivileged"]["status"] == 200
    finally:
        beoserv.terminate()
        beoserv.wait(10)
