"""The [artifacts] keys that size the master's servers (nodes, node_range, lease_time, beoserv): checked when
the file is read, with errors that name the file, the key and what to write instead."""

import pytest

from beoboot import config
from beoboot.artifacts.servers import parse_node_range, range_needed
from beoboot.errors import ConfigError


def load(tmp_path, text):
    path = tmp_path / "site.toml"
    path.write_text("[artifacts]\n" + text)
    cfg = config.load(path, environ={})
    assert config.Config.from_json(cfg.to_json()) == cfg
    return cfg.artifacts


def refused(tmp_path, text):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    return err.value


def test_the_embedded_default_range_holds_its_nodes():
    art = config.load(environ={}).artifacts
    assert parse_node_range(art.node_range).addresses >= range_needed(art.nodes)


def test_a_site_of_1000_nodes_with_a_range_to_match(tmp_path):
    art = load(tmp_path, 'nodes = 1000\nnode_range = "10.54.0.10-10.54.7.250/21"\n')
    assert (art.nodes, art.lease_time, art.beoserv) == (1000, "1d", "/usr/local/bin/beoserv")


def test_a_range_too_small_for_the_nodes_names_both_keys_and_a_range_that_fits(tmp_path):
    err = refused(tmp_path, "nodes = 1000\n")
    assert str(tmp_path / "site.toml") in err.message
    assert "artifacts.node_range = '10.0.2.100-10.0.2.199/24' has 100 addresses" in err.message
    assert "artifacts.nodes = 1000" in err.message and "(1500)" in err.message
    assert err.hint == 'widen it, e.g. node_range = "10.0.2.100-10.0.8.63/20"; or set nodes = 66 or fewer'
    # and the range it suggests is taken
    assert load(tmp_path, 'nodes = 1000\nnode_range = "10.0.2.100-10.0.8.63/20"\n').nodes == 1000


def test_a_range_just_holding_the_nodes_is_too_small(tmp_path):
    # 1016 addresses for 1000 nodes: a storm of nodes with sequential MACs drew thousands of NAKs
    err = refused(tmp_path, 'nodes = 1000\nnode_range = "10.54.0.10-10.54.4.1/21"\n')
    assert "has 1016 addresses" in err.message and "nodes = 677 or fewer" in err.hint


def test_a_range_that_no_network_can_widen_says_how_many_addresses(tmp_path):
    err = refused(tmp_path, 'nodes = 1000\nnode_range = "255.255.255.1-255.255.255.10/24"\n')
    assert err.hint.startswith("give a range of 1500 addresses")


def test_beside_another_dhcp_server_the_range_is_not_ours_to_size(tmp_path):
    assert load(tmp_path, "nodes = 1000\nproxy_dhcp = true\n").nodes == 1000


@pytest.mark.parametrize(
    "value, expected", [('"1d"', "1d"), ('"12h"', "12h"), ('"2m"', "2m"), ("86400", "86400"), ('"1w"', "1w")]
)
def test_lease_times_dnsmasq_takes(tmp_path, value, expected):
    assert load(tmp_path, f"lease_time = {value}\n").lease_time == expected


@pytest.mark.parametrize(
    "value", ['"1m"', "119", '"1D"', '"infinite"', '"1d\\n"', '"1.5h"', "true", "0", '"-1d"', '"9999999w"']
)
def test_lease_times_dnsmasq_would_not_take_are_refused(tmp_path, value):
    err = refused(tmp_path, f"lease_time = {value}\n")
    assert "artifacts.lease_time" in err.message and '"1d"' in err.message


@pytest.mark.parametrize("value", [0, -5, 65537, "1000", 1.5, True])
def test_a_node_count_is_a_whole_number(tmp_path, value):
    text = f'nodes = "{value}"\n' if isinstance(value, str) else f"nodes = {str(value).lower()}\n"
    err = refused(tmp_path, text)
    assert "artifacts.nodes" in err.message and "a number of nodes from 1 to 65536" in err.message


@pytest.mark.parametrize(
    "value",
    ["beoserv", "/opt/beo serv", "/opt/%h/beoserv", "/opt/$HOME/beoserv", '/opt/\\"x', "/opt/x;y", "/opt/x\\ny"],
)
def test_beoserv_is_an_absolute_path_systemd_takes_as_it_is(tmp_path, value):
    err = refused(tmp_path, f'beoserv = "{value}"\n')
    assert "artifacts.beoserv" in err.message and "/usr/local/bin/beoserv" in err.message
