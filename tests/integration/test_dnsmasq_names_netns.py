"""dnsmasq with [artifacts] dns = true, as a build renders it, really run: it answers the node names from
the hosts file beoserv keeps (and reads it again when beoserv rewrites it), `master` as the nodes reach it,
and forwards every other name to the site's name server, here one of the test's own. All of it in two
network namespaces the test makes (dnsmasq's DHCP and TFTP sockets included): no packet leaves them."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netns import veth_pair

from beoboot.artifacts.servers import DnsService, parse_node_range, write_server_configs
from beoboot.master import hostsfile

pytestmark = pytest.mark.integration

TINYDNS = str(Path(__file__).resolve().parents[1] / "support" / "tinydns.py")
MASTER, NODE = "10.98.0.1", "10.98.0.50"  # the namespaces' own addresses
SITE_DNS_PORT = 5354  # the site's name server, on the server namespace's loopback


def ask(pair, name):
    done = subprocess.run(
        ["ip", "netns", "exec", pair.client_ns, sys.executable, TINYDNS, "query", MASTER, "53", name],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def dnsmasq(tmp_path):
    if os.geteuid() != 0 or shutil.which("dnsmasq") is None or shutil.which("ip") is None:
        pytest.skip("needs root, ip and dnsmasq (apt-get install iproute2 dnsmasq-base)")
    hosts_dir = tmp_path / "hosts.d"
    hosts_dir.mkdir()
    (tmp_path / "tree").mkdir()
    with veth_pair("bbdns", MASTER, NODE) as pair:
        conf, _ = write_server_configs(
            tmp_path / "server",
            node_range=parse_node_range("10.98.0.100-10.98.0.150/24"),
            nodes=32,
            proxy_dhcp=False,
            http_root=tmp_path / "tree",
            master_url=f"http://{MASTER}:8080/",
            mtime=0,
            interface=pair.server_if,
            dns=DnsService((f"127.0.0.1#{SITE_DNS_PORT}",), str(hosts_dir)),
        )
        text = conf.read_text()
        assert "port=53\nno-resolv\n" in text  # never this host's resolv.conf
        conf.write_text(text.replace("/run/beoboot-dnsmasq.leases", str(tmp_path / "leases")))
        in_server = ["ip", "netns", "exec", pair.server_ns]
        site = subprocess.Popen(
            [
                *in_server,
                sys.executable,
                TINYDNS,
                "serve",
                "127.0.0.1",
                str(SITE_DNS_PORT),
                "licence.example.org=10.20.30.40",
            ],
            stdout=subprocess.PIPE,
        )
        server = subprocess.Popen(
            [*in_server, "dnsmasq", "--keep-in-foreground", "--user=root", f"--conf-file={conf}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert site.stdout is not None and b"serving" in site.stdout.readline()
            yield pair, hosts_dir / "nodes"
        finally:
            for process in (server, site):
                process.terminate()
                process.wait(10)


def test_node_names_master_and_forwarded_names(dnsmasq):
    pair, hosts = dnsmasq
    hostsfile.update(str(hosts), "10.98.0.103 n3 .3\n")  # as beoserv writes its hosts_file
    deadline = time.monotonic() + 10
    while (found := ask(pair, "n3")) != "10.98.0.103":
        assert time.monotonic() < deadline, found  # dnsmasq starting up, then reading the new file
        time.sleep(0.2)
    assert ask(pair, "master") == MASTER
    assert ask(pair, "licence.example.org") == "10.20.30.40"  # forwarded to the site's server
    assert ask(pair, "nowhere.example.org") == "rcode 3"
    hostsfile.update(str(hosts), "10.98.0.103 n3 .3\n10.98.0.104 n4 .4\n")  # a node registered
    deadline = time.monotonic() + 10
    while (found := ask(pair, "n4")) != "10.98.0.104":
        assert time.monotonic() < deadline, found  # read again without a SIGHUP
        time.sleep(0.2)
