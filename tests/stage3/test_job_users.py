"""BeoNSS for jobs: the master names the job's user and groups, the node keeps them in the environment
root's /etc/passwd and /etc/group, replacing by name or number, written by rename."""

import os
import stat

import pytest

from beoboot.master.manifest.users import JobUsers, group_entries, passwd_entry
from stage3.accounts import AccountError, Accounts


def test_the_masters_entry_without_its_password():
    assert passwd_entry(0, 0, {}).startswith("root:x:0:0:")
    nobody = passwd_entry(65534, 65534, {"USER": "someone-else"})
    assert nobody.split(":")[:4] == ["nobody", "x", "65534", "65534"]  # the master's word, not the job's USER


def test_a_user_the_master_cannot_list_is_made_from_the_environment():
    env = {"USER": "alice", "HOME": "/home/alice", "SHELL": "/bin/bash"}
    assert passwd_entry(4242, 4243, env) == "alice:x:4242:4243:alice:/home/alice:/bin/bash"
    assert passwd_entry(4242, 4243, {}) == "uid4242:x:4242:4243:uid4242:/:/bin/sh"
    assert passwd_entry(4242, 4243, {"USER": "a:b\nc"}).startswith("a_b c:x:4242:")  # never a second line


def test_group_entries_name_the_groups_the_master_knows():
    assert group_entries((0, 4, 0, 987654), "alice") == ("root:x:0:alice", "adm:x:4:alice")


def test_entries_are_kept_a_while_and_asked_again_after(monkeypatch):
    import beoboot.master.manifest.users as jobusers

    asked = []
    monkeypatch.setattr(jobusers, "passwd_entry", lambda *args: asked.append(args) or passwd_entry(*args))
    users = JobUsers()
    first = users.entries(0, 0, (4,), {})
    assert first == (passwd_entry(0, 0, {}), ("root:x:0:root", "adm:x:4:root"))
    assert users.entries(0, 0, (4,), {}) == first and len(asked) == 1  # beoserv's loop: no NSS lookup
    monkeypatch.setattr(jobusers, "KEEP_SECONDS", 0.0)  # a directory service's user may change any time
    assert users.entries(0, 0, (4,), {}) == first and len(asked) == 2


def test_the_node_adds_replaces_and_keeps(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    accounts = Accounts(str(tmp_path))
    accounts.ensure("alice:x:1000:1000:Alice:/home/alice:/bin/bash", ("alice:x:1000:alice", "users:x:100:alice"))
    accounts.ensure("bob:x:1001:100:Bob:/home/bob:/bin/sh", ("users:x:100:bob",))
    accounts.ensure("root:x:0:0:root:/root:/bin/bash", ("root:x:0:root",))  # the master's root wins
    assert (etc / "passwd").read_text().splitlines() == [
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash",
        "bob:x:1001:100:Bob:/home/bob:/bin/sh",
        "root:x:0:0:root:/root:/bin/bash",
    ]
    assert (etc / "group").read_text().splitlines() == [
        "nogroup:x:65534:",
        "alice:x:1000:alice",
        "users:x:100:alice,bob",
        "root:x:0:root",
    ]
    assert stat.S_IMODE(os.stat(etc / "passwd").st_mode) == 0o644
    inode = os.stat(etc / "passwd").st_ino
    accounts.ensure("alice:x:1000:1000:Alice:/home/alice:/bin/bash", ("alice:x:1000:alice",))
    assert os.stat(etc / "passwd").st_ino == inode  # known: no write
    assert sorted(os.listdir(etc)) == ["group", "passwd"]  # no temporary left


@pytest.mark.parametrize(
    "entry, groups",
    [
        ("alice:x:1000", ()),
        ("a:x:1:1:a:/:/bin/sh\nroot::0:0:::", ()),
        ("alice:x:1000:1000:A:/:/bin/sh", ("users:x:hundred:",)),
    ],
)
def test_a_malformed_entry_is_refused_and_nothing_written(tmp_path, entry, groups):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    with pytest.raises(AccountError):
        Accounts(str(tmp_path)).ensure(entry, groups)
    assert (tmp_path / "etc/passwd").read_text() == "root:x:0:0:root:/:/bin/sh\n"
