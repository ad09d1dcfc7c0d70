"""The master's server configs: the node range's parser and sizes table-tested, and what is written checked by
the servers' own checkers (dnsmasq --test, nginx -t, systemd-analyze verify) and beoserv's own argument parser.
A storm of 1000 nodes against the real dnsmasq: tests/integration/test_site_storm_netns.py."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from beoboot.artifacts.servers import (
    beoserv_nofile,
    dnsmasq_nofile,
    listen_address,
    nodes_fitting,
    parse_node_range,
    range_needed,
    tftp_max,
    widened,
    write_beoserv_unit,
    write_server_configs,
)
from beoboot.errors import ConfigError
from beoboot.master.cli import beoserv_parser

MTIME = 1700000000
RANGE_1000 = "10.54.0.10-10.54.7.250/21"  # 2033 addresses: 1000 nodes and room to spare
# beoserv as build.py installs it: a console script beside the interpreter of the virtualenv
BEOSERV = Path(sys.executable).parent / "beoserv"


def tool(name, package):
    """The path of a checker build.py installs; skipped only where setup has not run."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs {name} ({package}): run `python3 build.py setup`")
    return path


# --- the node range ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "text, addresses",
    [
        ("10.54.0.10-10.54.0.250", 241),
        ("10.54.0.1-10.54.3.254/22", 1022),  # in 10/8 dnsmasq hands out .0 and .255 too
        (RANGE_1000, 2033),
        ("192.168.0.1-192.168.0.254", 254),
        ("192.168.0.1-192.168.3.254/22", 1016),  # in the old class C it skips .0 and .255: 3 of each here
        ("223.255.255.250-224.0.0.5/2", 11),  # .255 skipped below 224.0.0.0, nothing above
    ],
)
def test_a_range_holds_the_addresses_dnsmasq_hands_out(text, addresses):
    assert parse_node_range(text).addresses == addresses


@pytest.mark.parametrize("nodes, needed", [(1, 2), (2, 3), (64, 96), (1000, 1500), (1001, 1502)])
def test_a_range_needs_the_nodes_and_half_as_many_again(nodes, needed):
    assert range_needed(nodes) == needed


def test_nodes_fitting_is_the_inverse_of_range_needed():
    for addresses in range(2, 3000):
        nodes = nodes_fitting(addresses)
        assert range_needed(nodes) <= addresses < range_needed(nodes + 1), addresses


@pytest.mark.parametrize(
    "text, needed, expected",
    [
        ("10.0.2.100-10.0.2.199/24", 96, "10.0.2.100-10.0.2.195/24"),  # fits: the same prefix
        ("10.0.2.100-10.0.2.199/24", 1500, "10.0.2.100-10.0.8.63/20"),  # 10.0.8.63 is past the /21
        ("192.168.0.10-192.168.0.200/24", 1500, "192.168.0.10-192.168.5.239/21"),  # 10 .0s and .255s skipped
        ("255.255.255.1-255.255.255.10/24", 1000, None),  # no IPv4 network holds it
    ],
)
def test_widened_range_holds_what_is_needed(text, needed, expected):
    wider = widened(parse_node_range(text), needed)
    assert wider == expected
    if wider is not None:
        assert parse_node_range(wider).addresses >= needed


@pytest.mark.parametrize(
    "nodes, beoserv, dnsmasq",
    [(1, 8192, 66), (64, 8192, 192), (1000, 8192, 2064), (2000, 9024, 4064), (10000, 41024, 20064)],
)
def test_open_file_limits_grow_with_the_nodes(nodes, beoserv, dnsmasq):
    assert beoserv_nofile(nodes) == beoserv and beoserv >= 4 * nodes + 1024
    assert dnsmasq_nofile(nodes) == dnsmasq and tftp_max(nodes) == nodes
    assert dnsmasq_nofile(nodes) - 50 >= tftp_max(nodes)  # dnsmasq keeps 50 for itself, the rest for TFTP


@pytest.mark.parametrize(
    "url, listen",
    [
        ("http://10.0.2.2:8080/", "0.0.0.0:8080"),
        ("http://m/", "0.0.0.0:80"),
        ("https://[fd00::1]:8443/boot", "0.0.0.0:8443"),
        ("https://master.cluster/", "0.0.0.0:443"),
    ],
)
def test_beoserv_listens_on_every_address_at_the_master_urls_port(url, listen):
    assert listen_address(url) == listen


# --- what is written, checked by the servers themselves -------------------------------------------------


def server_configs(tmp_path, proxy=False, nodes=1000, text=RANGE_1000):
    return write_server_configs(
        tmp_path,
        node_range=parse_node_range(text),
        nodes=nodes,
        lease_time="1d",
        proxy_dhcp=proxy,
        http_root=tmp_path / "tree",
        master_url="http://10.54.0.1:8080/pxe/",
        mtime=MTIME,
        http_listen="127.0.0.1:8080",
    )


def directives(path):
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("proxy", [False, True])
def test_server_configs_pass_the_servers_own_checks(tmp_path, proxy):
    dnsmasq, nginx = server_configs(tmp_path, proxy)
    lines = directives(dnsmasq)
    assert ("dhcp-range=10.54.0.0,proxy,255.255.248.0" in lines) is proxy
    assert ("dhcp-range=10.54.0.10,10.54.7.250,255.255.248.0,1d" in lines) is not proxy
    assert "dhcp-boot=tag:ipxe,http://10.54.0.1:8080/pxe/boot.ipxe" in lines
    assert "tftp-max=1000" in lines and "tftp-secure" not in lines
    subprocess.run(
        [tool("dnsmasq", "dnsmasq-base"), "--test", f"--conf-file={dnsmasq}"], check=True, capture_output=True
    )
    subprocess.run([tool("nginx", "nginx-light"), "-t", "-c", str(nginx)], check=True, capture_output=True)


def test_dnsmasq_conf_is_sized_for_1000_nodes(tmp_path):
    dnsmasq, _ = server_configs(tmp_path)
    lines = directives(dnsmasq)
    # every address of the range may be leased (dnsmasq's default is 1000), no ping, no reply delay
    for line in ("dhcp-lease-max=2033", "tftp-max=1000", "no-ping", "dhcp-authoritative"):
        assert line in lines
    assert "dhcp-leasefile=/run/beoboot-dnsmasq.leases" in lines
    assert not any(line.startswith("dhcp-reply-delay") for line in lines)
    # the Run line starts dnsmasq with room for tftp-max, which dnsmasq would cut to fit a smaller limit
    assert (
        f"# Run (as root): prlimit --nofile=2064 dnsmasq --keep-in-foreground --conf-file={dnsmasq}"
        in dnsmasq.read_text()
    )


def test_dnsmasq_conf_beside_another_dhcp_server_hands_out_no_leases(tmp_path):
    lines = directives(server_configs(tmp_path, proxy=True)[0])
    assert not any(line.startswith(("dhcp-lease", "dhcp-authoritative", "no-ping")) for line in lines)
    assert "tftp-max=1000" in lines


def test_server_configs_default_to_the_embedded_configs_sizes(tmp_path):
    dnsmasq, _ = write_server_configs(
        tmp_path,
        node_range=parse_node_range("10.0.2.100-10.0.2.199/24"),
        proxy_dhcp=False,
        http_root=tmp_path,
        master_url="http://10.0.2.2:8080/",
        mtime=MTIME,
    )
    lines = directives(dnsmasq)
    assert "tftp-max=64" in lines and "dhcp-range=10.0.2.100,10.0.2.199,255.255.255.0,1d" in lines


def beoserv_unit(tmp_path, beoserv=BEOSERV, nodes=1000):
    return write_beoserv_unit(
        tmp_path,
        nodes=nodes,
        beoserv=str(beoserv),
        root=Path("/srv/beoboot"),
        master_url="http://10.54.0.1:8080/",
        mtime=MTIME,
    )


def verify(unit):
    """systemd-analyze verify: a unit systemd would load as it is, with every program it runs there."""
    return subprocess.run([tool("systemd-analyze", "systemd"), "verify", str(unit)], capture_output=True, text=True)


def test_beoserv_unit_passes_systemd_analyze_verify(tmp_path):
    assert BEOSERV.is_file(), "build.py installs beoserv into the virtualenv"
    result = verify(beoserv_unit(tmp_path))
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_systemd_analyze_verify_finds_a_beoserv_that_is_not_there(tmp_path):
    result = verify(beoserv_unit(tmp_path, beoserv=tmp_path / "no-beoserv"))
    assert result.returncode != 0 and f"{tmp_path}/no-beoserv" in result.stderr


def unit_settings(unit):
    settings = {}
    for line in directives(unit):
        key, _, value = line.partition("=")
        settings[key] = value
    return settings


@pytest.mark.parametrize("nodes, nofile", [(64, 8192), (1000, 8192), (4000, 17024)])
def test_beoserv_unit_is_sized_and_restarted(tmp_path, nodes, nofile):
    settings = unit_settings(beoserv_unit(tmp_path, nodes=nodes))
    assert settings["LimitNOFILE"] == str(nofile) and int(nofile) >= max(8192, 4 * nodes + 1024)
    assert settings["Restart"] == "on-failure" and settings["KillMode"] == "mixed"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["After"] == "network-online.target" and settings["Wants"] == "network-online.target"
    assert (settings["StateDirectory"], settings["RuntimeDirectory"]) == ("beoboot", "beoserv")


def test_beoserv_unit_runs_beoserv_with_its_real_flags(tmp_path):
    words = shlex.split(unit_settings(beoserv_unit(tmp_path))["ExecStart"])
    assert words[0] == str(BEOSERV)
    args = beoserv_parser().parse_args(words[1:])  # beoserv's own parser: a flag it lacks would exit here
    assert (args.root, args.db, args.config) == (
        Path("/srv/beoboot"),
        Path("/var/lib/beoboot/nodes.db"),
        Path("/etc/beoboot/beoserv.toml"),
    )
    assert (args.listen, args.bpsh_socket) == ("0.0.0.0:8080", "/run/beoserv/bpsh.sock")
