"""The node's names in /etc/hosts, for stage 3's root and for the environment root jobs run in."""

from agent import protocol as p
from stage3.names import NodeNames, hosts_file, set_identity, write_env_hosts

REPLY = p.RegisterReply(3, ".3", "n3", "10.54.0.13", 1, 5.0, 30.0)


def test_hosts_name_the_node_and_the_master_by_address():
    assert hosts_file(REPLY, "10.54.0.13/24", "http://10.54.0.1:8080/") == (
        "127.0.0.1 localhost\n10.54.0.13 n3 .3 self .-2\n10.54.0.1 master master0 .-1\n"
    )
    # a master known by name is left to DNS
    assert (
        hosts_file(REPLY, "10.54.0.13", "http://head.cluster:8080/")
        == "127.0.0.1 localhost\n10.54.0.13 n3 .3 self .-2\n"
    )


def test_identity_under_another_root_does_not_touch_the_hostname(tmp_path):
    set_identity(REPLY, "10.54.0.13/24", "http://10.54.0.1:8080/", root=str(tmp_path), dry_run=False)
    assert (tmp_path / "etc/hostname").read_text() == "n3\n"
    assert "10.54.0.13 n3 .3" in (tmp_path / "etc/hosts").read_text()


def test_the_cluster_table_adds_the_other_nodes_once(tmp_path):
    (tmp_path / "etc").mkdir()
    own = hosts_file(REPLY, "10.54.0.13/24", "http://10.54.0.1:8080/")
    write_env_hosts(own, "10.54.0.10 n0 .0\n10.54.0.13 n3 .3\n10.54.0.14 n4 .4\n", root=str(tmp_path))
    assert (tmp_path / "etc/hosts").read_text() == own + "10.54.0.10 n0 .0\n10.54.0.14 n4 .4\n"
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["hosts"]  # no temporary left


def test_a_link_at_the_temporary_name_is_never_written_through(tmp_path):
    """The names are written by a temporary name in the environment root's /etc, where nothing of a job's
    may be; were a link there anyway, the agent, root outside the chroot, would write where it points."""
    import threading

    (tmp_path / "etc").mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    for temporary in ("hosts.new", f"hosts.beoboot-{threading.get_ident()}"):  # the names it had and has
        (tmp_path / "etc" / temporary).symlink_to(victim)
    write_env_hosts("127.0.0.1 localhost\n", "", root=str(tmp_path))
    assert victim.read_text() == "untouched\n" and (tmp_path / "etc/hosts").read_text() == "127.0.0.1 localhost\n"


def test_without_an_address_plan_the_names_follow_a_lease_that_moved_the_node(tmp_path):
    """A new DHCP lease moved the node: its own line in both roots names the new address, and the
    environment root still lists the other nodes of the last host table."""
    unplanned = p.RegisterReply(3, ".3", "n3", None, 1, 5.0, 30.0)
    root, env = tmp_path / "root", tmp_path / "env"
    names = NodeNames(unplanned, "10.0.2.15/24", "http://10.0.2.2:8080/", str(env), dry_run=True, root=str(root))
    names.write_env_root()
    names.take_table("10.0.2.15 n3 .3\n10.0.2.16 n4 .4\n")
    assert names.move("10.0.2.40/24")
    assert (env / "etc/hosts").read_text() == (
        "127.0.0.1 localhost\n10.0.2.40 n3 .3 self .-2\n10.0.2.2 master master0 .-1\n10.0.2.16 n4 .4\n"
    )
    assert "10.0.2.40 n3 .3 self .-2\n" in (root / "etc/hosts").read_text()


def test_with_an_address_plan_the_names_stay_on_the_permanent_address(tmp_path):
    names = NodeNames(
        REPLY, "10.54.0.13", "http://10.54.0.1:8080/", str(tmp_path / "env"), dry_run=True, root=str(tmp_path / "root")
    )
    names.write_env_root()
    before = (tmp_path / "env/etc/hosts").read_text()
    assert not names.move("10.0.2.40/24")
    assert (tmp_path / "env/etc/hosts").read_text() == before and not (tmp_path / "root").exists()


def test_the_master_is_known_by_its_own_host_name_too():
    """Launchers on the master name it to what they start on nodes (Hydra: --control-port vm:PORT)."""
    named = p.RegisterReply(3, ".3", "n3", "10.54.0.13", 1, 5.0, 30.0, master_hostname="head")
    assert hosts_file(named, "10.54.0.13/24", "http://10.54.0.1:8080/").endswith("10.54.0.1 master master0 .-1 head\n")
    for odd in ("master", "localhost", "bad name", "a\nb"):
        reply = p.RegisterReply(3, ".3", "n3", "10.54.0.13", 1, 5.0, 30.0, master_hostname=odd)
        assert hosts_file(reply, "10.54.0.13/24", "http://10.54.0.1:8080/").endswith("10.54.0.1 master master0 .-1\n")


def test_resolv_conf_takes_the_masters_servers_over_the_leases(tmp_path):
    from stage3.names import resolv_conf

    configured = p.RegisterReply(3, ".3", "n3", None, 1, 5.0, 30.0, dns_servers=("10.0.0.53",), dns_search=("c.org",))
    assert resolv_conf(configured, ["10.0.2.3"]) == (
        "# written by beoboot from the master's config (dns_servers)\nsearch c.org\nnameserver 10.0.0.53\n"
        "options timeout:2 attempts:2\n"
    )
    assert "nameserver 10.0.2.3\n" in resolv_conf(REPLY, ["10.0.2.3"])
    assert "nameserver" not in resolv_conf(REPLY, [])
    names = NodeNames(REPLY, "10.54.0.13/24", "http://10.54.0.1:8080/", str(tmp_path / "env"), dry_run=True)
    names.root = str(tmp_path / "root")
    names.resolv = resolv_conf(REPLY, ["10.0.2.3"])
    names.write_root()
    names.write_env_root()
    for root in ("root", "env"):
        assert (tmp_path / root / "etc/resolv.conf").read_text() == names.resolv
