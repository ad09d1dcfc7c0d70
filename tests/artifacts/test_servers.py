"""The servers' configs: the node range's parser table-tested, and what is written checked by the servers'
own checkers (dnsmasq --test, nginx -t)."""

import shutil
import subprocess

import pytest

from beoboot.artifacts.servers import parse_node_range, write_server_configs
from beoboot.errors import ConfigError

MTIME = 1700000000


@pytest.mark.parametrize(
    "text, first, last, network",
    [
        ("10.54.0.10-10.54.0.250", "10.54.0.10", "10.54.0.250", "10.54.0.0/24"),
        ("10.54.0.10-10.54.3.250/22", "10.54.0.10", "10.54.3.250", "10.54.0.0/22"),
        (" 192.168.1.2 - 192.168.1.9 ", "192.168.1.2", "192.168.1.9", "192.168.1.0/24"),
    ],
)
def test_parse_node_range(text, first, last, network):
    parsed = parse_node_range(text)
    assert (str(parsed.first), str(parsed.last), str(parsed.network)) == (first, last, network)


@pytest.mark.parametrize(
    "text, says",
    [
        ("10.54.0.10", "no '-'"),
        ("10.54.0.300-10.54.0.4", "10.54.0.300"),
        ("10.54.0.20-10.54.0.10", "ends before it starts"),
        ("10.54.0.10-10.54.1.10", "outside 10.54.0.0/24"),
        ("10.54.0.0-10.54.0.10", "network or broadcast"),
        ("10.54.0.1-10.54.0.9/x", "10.54.0.1-10.54.0.9/x"),
    ],
)
def test_parse_node_range_rejects(text, says):
    with pytest.raises(ConfigError) as err:
        parse_node_range(text)
    assert says in str(err.value) and text.strip() in str(err.value)


@pytest.mark.parametrize("proxy", [False, True])
def test_server_configs_pass_the_servers_own_checks(tmp_path, proxy):
    dnsmasq, nginx = write_server_configs(
        tmp_path,
        node_range=parse_node_range("10.54.0.10-10.54.0.250"),
        proxy_dhcp=proxy,
        http_root=tmp_path / "tree",
        master_url="http://10.54.0.1",
        mtime=MTIME,
        http_listen="127.0.0.1:8080",
    )
    text = dnsmasq.read_text()
    assert ("dhcp-range=10.54.0.0,proxy,255.255.255.0" in text) is proxy
    assert ("dhcp-range=10.54.0.10,10.54.0.250,255.255.255.0,12h" in text) is not proxy
    assert "dhcp-boot=tag:ipxe,http://10.54.0.1/boot.ipxe" in text
    if shutil.which("dnsmasq"):
        subprocess.run(["dnsmasq", "--test", "-C", str(dnsmasq)], check=True, capture_output=True)
    if shutil.which("nginx"):
        subprocess.run(["nginx", "-t", "-c", str(nginx)], check=True, capture_output=True)
