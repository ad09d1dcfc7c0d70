"""The node's names in /etc/hosts, for stage 3's root and for the environment root jobs run in."""

from agent import protocol as p
from agent.supervisor import hosts_file, set_identity, write_env_hosts

REPLY = p.RegisterReply(3, ".3", "n3", "10.54.0.13", 1, 5.0, 30.0)


def test_hosts_name_the_node_and_the_master_by_address():
    assert hosts_file(REPLY, "10.54.0.13/24", "http://10.54.0.1:8080/") == (
        "127.0.0.1 localhost\n10.54.0.13 n3 .3\n10.54.0.1 master .-1\n"
    )
    # a master known by name is left to DNS
    assert hosts_file(REPLY, "10.54.0.13", "http://head.cluster:8080/") == "127.0.0.1 localhost\n10.54.0.13 n3 .3\n"


def test_identity_under_another_root_does_not_touch_the_hostname(tmp_path):
    set_identity(REPLY, "10.54.0.13/24", "http://10.54.0.1:8080/", root=str(tmp_path), dry_run=False)
    assert (tmp_path / "etc/hostname").read_text() == "n3\n"
    assert "10.54.0.13 n3 .3" in (tmp_path / "etc/hosts").read_text()


def test_the_cluster_table_adds_the_other_nodes_once(tmp_path):
    (tmp_path / "etc").mkdir()
    own = hosts_file(REPLY, "10.54.0.13/24", "http://10.54.0.1:8080/")
    write_env_hosts(own, "10.54.0.10 n0 .0\n10.54.0.13 n3 .3\n10.54.0.14 n4 .4\n", root=str(tmp_path))
    assert (tmp_path / "etc/hosts").read_text() == own + "10.54.0.10 n0 .0\n10.54.0.14 n4 .4\n"
    assert not (tmp_path / "etc/hosts.new").exists()
