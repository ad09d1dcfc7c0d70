"""beoserv's block in a hosts file: the administrator's lines kept byte for byte, the block replaced in place."""

import os
import stat

import pytest

from beoboot.master.hostsfile import BEGIN, END, HostsFileError, update, with_block

ADMIN = "127.0.0.1\tlocalhost\n10.0.2.2 head  # the master\n"
TABLE = "10.0.2.15 n0 .0\n10.0.2.16 n1 .1\n"


def test_a_file_without_a_block_gets_one_at_its_end():
    assert with_block(ADMIN, TABLE) == ADMIN + BEGIN + "\n" + TABLE + END + "\n"
    assert with_block("", TABLE) == BEGIN + "\n" + TABLE + END + "\n"
    assert with_block("127.0.0.1 localhost", "").startswith("127.0.0.1 localhost\n" + BEGIN)  # no final newline


def test_the_block_is_replaced_where_it_stands_and_the_rest_is_kept():
    before = ADMIN + BEGIN + "\n10.0.2.9 n7 .7\n" + END + "\n::1 ip6-localhost\n"
    assert with_block(before, TABLE) == ADMIN + BEGIN + "\n" + TABLE + END + "\n::1 ip6-localhost\n"
    assert with_block(with_block(before, TABLE), TABLE) == with_block(before, TABLE)


@pytest.mark.parametrize(
    "text, complaint",
    [
        (ADMIN + BEGIN + "\n10.0.2.9 n7 .7\n", "no '# beoboot nodes: end'"),
        (ADMIN + END + "\n", "without '# beoboot nodes: begin"),
    ],
)
def test_a_broken_block_is_refused_not_guessed(text, complaint):
    with pytest.raises(HostsFileError, match=complaint):
        with_block(text, TABLE)


def test_update_keeps_the_mode_leaves_no_temporary_file_and_says_when_nothing_changed(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text(ADMIN)
    hosts.chmod(0o640)
    assert update(str(hosts), TABLE)
    assert hosts.read_text() == ADMIN + BEGIN + "\n" + TABLE + END + "\n"
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o640
    inode = hosts.stat().st_ino
    assert not update(str(hosts), TABLE) and hosts.stat().st_ino == inode  # unchanged: not rewritten
    assert sorted(os.listdir(tmp_path)) == ["hosts"]


def test_update_makes_a_missing_file_and_a_broken_one_is_left_alone(tmp_path):
    made = tmp_path / "nodes.hosts"
    assert update(str(made), TABLE) and stat.S_IMODE(made.stat().st_mode) == 0o644
    broken = tmp_path / "hosts"
    broken.write_text(ADMIN + BEGIN + "\n")
    with pytest.raises(HostsFileError, match="no '# beoboot nodes: end'"):
        update(str(broken), TABLE)
    assert broken.read_text() == ADMIN + BEGIN + "\n"
