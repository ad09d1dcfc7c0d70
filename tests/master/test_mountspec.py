"""[[mounts]], the name servers and the hooks in beoserv's config: what a node is sent, and a wrong entry
refused by name when beoserv reads the file."""

import pytest

from agent import protocol as p
from beoboot.configfile import render
from beoboot.errors import ConfigError
from beoboot.master.config import MasterConfig, parse_config

SITE = """
on_node_up = ["/usr/local/sbin/node-up", "--quiet"]
dns_servers = ["10.0.0.53"]
dns_search = ["cluster.example.org"]

[[mounts]]
type = "nfs"
source = "master:/home"
target = "/home"
options = "vers=4.2"

[[mounts]]
type = "tmpfs"
target = "/scratch"
options = "size=1g"
"""


def test_the_issues_spelling_is_read_and_sent_to_the_nodes():
    config = parse_config(SITE)
    assert [m.for_node() for m in config.mounts] == [
        p.NodeMount("nfs", "master:/home", "/home", "vers=4.2"),
        p.NodeMount("tmpfs", "tmpfs", "/scratch", "size=1g"),
    ]
    assert config.on_node_up == ("/usr/local/sbin/node-up", "--quiet") and config.on_node_down == ()
    assert (config.dns_servers, config.dns_search) == (("10.0.0.53",), ("cluster.example.org",))


def test_rendered_back_it_reads_the_same():
    config = parse_config(SITE)
    assert parse_config("\n".join(render(config))) == config
    assert parse_config("\n".join(render(MasterConfig()))) == MasterConfig()


@pytest.mark.parametrize(
    "text, complaint",
    [
        ('[[mounts]]\ntype = "cifs"\ntarget = "/x"', "mounts[0].type = 'cifs' must be one of nfs"),
        ('[[mounts]]\ntype = "tmpfs"\ntarget = "home"', "mounts[0].target = 'home' must be an absolute path"),
        ('[[mounts]]\ntype = "tmpfs"\ntarget = "/home/../etc"', "must be an absolute path"),
        ('[[mounts]]\ntype = "tmpfs"\ntarget = "/proc/x"', "which the node mounts itself"),
        ('[[mounts]]\ntype = "tmpfs"\ntarget = "/x"\noptions = "a b"', "must be mount options"),
        ('[[mounts]]\ntype = "nfs"\nsource = "master"\ntarget = "/home"', "an NFS source is HOST:/PATH"),
        ('[[mounts]]\ntype = "ext4"\nsource = "scratch"\ntarget = "/s"', '"LABEL=NAME"'),
        ('[[mounts]]\ntype = "tmpfs"\ntarget = "/s"\n[[mounts]]\ntype = "tmpfs"\ntarget = "/s"', "mounted twice"),
        ('[[mounts]]\ntarget = "/s"', "mounts[0].type is missing"),
        ("mounts = 3", "a list of tables"),
        ('on_node_up = "/bin/true"', "must be a list of strings"),
        ('on_node_up = [""]', "must name a program first"),
        ('dns_servers = ["dns.example"]', "not an IP address"),
        ('dns_servers = ["1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"]', "at most 3"),
        ('dns_search = ["-bad-"]', "not a domain name"),
        ("hook_concurrency = 0", "hook_concurrency"),
    ],
)
def test_a_wrong_entry_is_named(text, complaint):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "beoserv.toml")
    assert complaint in str(caught.value) and "beoserv.toml" in str(caught.value)
