import pytest

from beoboot.errors import ConfigError
from beoboot.master.config import MasterConfig, parse_config


def test_defaults():
    config = parse_config("")
    assert config == MasterConfig() and config.node_address(3) is None


def test_who_may_register_is_configured():
    assert (MasterConfig().local_nodes, MasterConfig().require_reserved_port) == ("root", True)
    config = parse_config('local_nodes = "none"\nrequire_reserved_port = false')
    assert (config.local_nodes, config.require_reserved_port) == ("none", False)


def test_beonss_addresses():
    config = parse_config('first_node_address = "10.54.0.10"\nheartbeat_interval = 1\nheartbeat_timeout = 6')
    assert [config.node_address(n) for n in (0, 1, 246)] == ["10.54.0.10", "10.54.0.11", "10.54.1.0"]
    assert config.heartbeat_interval == 1.0 and isinstance(config.heartbeat_interval, float)


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("colour = 1", "unknown keys"),
        ('heartbeat_timeout = "soon"', "must be int or float"),
        ("heartbeat_interval = 10\nheartbeat_timeout = 5", "must exceed"),
        ("heartbeat_interval = 0", "heartbeat_interval = 0 is not allowed: expected a number of seconds, from 0.01"),
        ('first_node_address = "10.0.0.300"', "not an IPv4 address"),
        ('hostname_prefix = "n-"', "letters only"),
        ("heartbeat_timeout = true", "must be int or float"),
        ("keep_boots = 0", "keep_boots = 0 must be >= 1"),
        ("keep_boots = 2.5", "keep_boots = 2.5 must be int"),
        ("= 1", "not valid TOML"),
        ('local_nodes = "all"', "local_nodes = 'all' must be one of 'root', 'none'"),
        ('require_reserved_port = "yes"', "require_reserved_port = 'yes' must be bool"),
        ("require_reserved_port = 1", "require_reserved_port = 1 must be bool"),
        ('hosts_file = "hosts"', "must be an absolute path in an existing directory"),
        ('hosts_file = "/no/such/dir/hosts"', "must be an absolute path in an existing directory"),
        ("max_nodes = 0", "max_nodes = 0 is not allowed: expected a number of nodes from 1"),
        ("max_transfers = 1.5", "max_transfers = 1.5 must be int"),
        ("groups = 3", "groups = 3 must be a table of node sets"),
        ("[groups]\nrack1 = 3", "must be a table of node sets"),
        ('[groups]\nup = "n1"', "has 'up', which is the master's own"),
        ('[groups]\n"a b" = "n1"', "has 'a b', which is not a group name"),
        ('[groups]\nrack1 = "n[7-5]"', r"groups.rack1 = 'n\[7-5\]': the range 7-5 runs backwards"),
        ('[groups]\nrack1 = "@gpu"', "groups.rack1 = '@gpu': groups are beoserv's to resolve"),
    ],
)
def test_bad_config_names_the_key(text, complaint):
    with pytest.raises(ConfigError, match=complaint):
        parse_config(text, "beoserv.toml")


def test_groups_are_node_sets_in_the_files_hostname_prefix_and_render_back():
    from beoboot.configfile import render

    text = 'hostname_prefix = "node"\n[groups]\nrack1 = "node[0-3]"\ngpu = "7,node9"\n'
    config = parse_config(text)
    assert config.group_nodes == (("gpu", (7, 9)), ("rack1", (0, 1, 2, 3)))
    assert parse_config("\n".join(render(config))) == config
