"""beoboot.jobaccess: a job brings only what its user may read on the master, with the master's owners."""

import os

import pytest

from agent import protocol as p
from beoboot.jobaccess import READ, SEARCH, AccessDenied, guard, may

NOBODY, NOGROUP = 65534, 65534


@pytest.mark.parametrize("mode, owner, group, uid, gids, want, allowed", [
    (0o644, 0, 0, NOBODY, {NOGROUP}, READ, True),  # others may read
    (0o640, 0, 0, NOBODY, {NOGROUP}, READ, False),
    (0o640, 0, 42, NOBODY, {NOGROUP, 42}, READ, True),  # a member of the group
    (0o044, NOBODY, 0, NOBODY, {NOGROUP}, READ, False),  # the owner gets the owner's bits only
    (0o700, 0, 0, 0, {0}, READ | SEARCH, True),  # root
    (0o711, 0, 0, NOBODY, {NOGROUP}, SEARCH, True),
    (0o711, 0, 0, NOBODY, {NOGROUP}, READ | SEARCH, False),  # may pass through, not list
])  # fmt: skip
def test_may(mode, owner, group, uid, gids, want, allowed):
    assert may(mode, owner, group, uid, frozenset(gids), want) == allowed


def test_directories_above_that_a_node_would_make_open_come_with_their_owner_and_mode(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o750)
    os.chown(home, NOBODY, NOGROUP)
    (tmp_path / "usr").mkdir(mode=0o755)
    files = [p.JobFile("/home/notes", 0o644, "ab" * 32, 1, uid=NOBODY, gid=NOGROUP),
             p.JobFile("/usr/tool", 0o755, "cd" * 32, 1)]  # fmt: skip
    os.chmod(tmp_path, 0o755)
    assert guard(files, NOBODY, NOGROUP, (), str(tmp_path)) == [p.JobFile("/home", 0o750, uid=NOBODY, gid=NOGROUP)]
    assert guard(files, 0, 0, (), str(tmp_path)) == [p.JobFile("/home", 0o750, uid=NOBODY, gid=NOGROUP)]


def test_what_the_user_may_not_have_is_refused_by_name(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o755)
    readable_inside = [p.JobFile("/private/f", 0o644, "ab" * 32, 1)]
    with pytest.raises(AccessDenied, match="/private: permission denied.*search"):
        guard(readable_inside, NOBODY, NOGROUP, (), str(tmp_path))
    with pytest.raises(AccessDenied, match="/etc/shadow: permission denied.*read"):
        guard([p.JobFile("/etc/shadow", 0o640, "ab" * 32, 1, gid=42)], NOBODY, NOGROUP, (), str(tmp_path))
    assert guard([p.JobFile("/etc/shadow", 0o640, "ab" * 32, 1, gid=42)], NOBODY, NOGROUP, (42,), str(tmp_path)) == []
    with pytest.raises(AccessDenied, match="list"):
        guard([p.JobFile("/tree", 0o711)], NOBODY, NOGROUP, (), str(tmp_path))
    assert guard([p.JobFile("/lnk", 0o777, link="/private/f")], NOBODY, NOGROUP, (), str(tmp_path)) == []


def test_may_reach_follows_the_directories_above(tmp_path):
    from beoboot.jobaccess import may_reach

    os.chmod(tmp_path, 0o755)
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open/f").write_text("")
    (tmp_path / "closed").mkdir(mode=0o700)
    (tmp_path / "closed/f").write_text("")
    gids, root = frozenset({NOGROUP}), str(tmp_path)  # pytest's own directories above are root's 0700
    assert may_reach("/open/f", NOBODY, gids, root) and may_reach("/open", NOBODY, gids, root)
    assert not may_reach("/closed/f", NOBODY, gids, root)
    assert not may_reach("/missing", NOBODY, gids, root)
    assert may_reach("/closed/f", 0, frozenset({0}), root)
