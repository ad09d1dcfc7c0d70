"""beoboot.master.manifest.access: a job brings only what its user may read on the master, with the master's owners.

The checks ask the kernel as the user, so the files are real, in a directory anyone may search (pytest's
own tmp_path lies under root's 0700 directory)."""

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from agent import protocol as p
from beoboot.master.manifest import access as jobaccess
from beoboot.master.manifest.access import READ, SEARCH, AccessDenied, UserView, guard, may, may_reach, readable

NOBODY, NOGROUP = 65534, 65534

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="checks as other users: needs root, as beoserv has")


@pytest.mark.parametrize(
    "mode, owner, group, uid, gids, want, allowed",
    [
        (0o644, 0, 0, NOBODY, {NOGROUP}, READ, True),  # others may read
        (0o640, 0, 0, NOBODY, {NOGROUP}, READ, False),
        (0o640, 0, 42, NOBODY, {NOGROUP, 42}, READ, True),  # a member of the group
        (0o044, NOBODY, 0, NOBODY, {NOGROUP}, READ, False),  # the owner gets the owner's bits only
        (0o700, 0, 0, 0, {0}, READ | SEARCH, True),  # root
        (0o711, 0, 0, NOBODY, {NOGROUP}, SEARCH, True),
        (0o711, 0, 0, NOBODY, {NOGROUP}, READ | SEARCH, False),  # may pass through, not list
    ],
)
def test_mode_bits_where_the_kernel_cannot_be_asked(mode, owner, group, uid, gids, want, allowed):
    assert may(mode, owner, group, uid, frozenset(gids), want) == allowed


@pytest.fixture
def open_dir():
    path = Path(tempfile.mkdtemp(prefix="beoboot-access-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def entry(path: Path, directory: bool = False) -> p.JobFile:
    st = os.stat(path)
    return p.JobFile(str(path), st.st_mode & 0o7777, "" if directory else "ab" * 32, 0, uid=st.st_uid, gid=st.st_gid)


def test_directories_above_that_a_node_would_make_open_come_with_their_owner_and_mode(open_dir):
    home = open_dir / "home"
    home.mkdir()
    home.chmod(0o750)
    os.chown(home, NOBODY, NOGROUP)
    (home / "notes").write_text("")
    files = [entry(home / "notes")]
    wanted = p.JobFile(str(home), 0o750, uid=NOBODY, gid=NOGROUP)
    assert wanted in guard(files, NOBODY, NOGROUP, ())
    assert wanted in guard(files, 0, 0, ())  # root's jobs are not checked, but still carry the owners
    assert not any(added.path == str(open_dir) for added in guard(files, 0, 0, ()))  # root's 0755: the default


def test_what_the_user_may_not_have_is_refused_by_name(open_dir):
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    (private / "f").write_text("")
    with pytest.raises(AccessDenied, match=f"{private}: permission denied.*search"):
        guard([entry(private / "f")], NOBODY, NOGROUP, ())
    shadow = os.stat("/etc/shadow")
    with pytest.raises(AccessDenied, match="/etc/shadow: permission denied.*read"):
        guard([entry(Path("/etc/shadow"))], NOBODY, NOGROUP, ())
    assert guard([entry(Path("/etc/shadow"))], NOBODY, NOGROUP, (shadow.st_gid,)) == []  # the shadow group
    listing = open_dir / "listing"
    listing.mkdir(mode=0o711)
    with pytest.raises(AccessDenied, match="list"):
        guard([entry(listing, directory=True)], NOBODY, NOGROUP, ())
    guard(
        [p.JobFile(str(open_dir / "lnk"), 0o777, link=str(private / "f"))], NOBODY, NOGROUP, ()
    )  # a link: its target is checked as an entry


def setfacl(*args: str) -> None:
    subprocess.run(["setfacl", *args], check=True)  # build.py installs acl


def test_acls_count_as_they_do_for_the_users_own_process(open_dir):
    """A project directory opened to a user by an ACL (mode bits alone say no), and a file an ACL closes
    to a user whom the mode bits let read."""
    project = open_dir / "project"
    project.mkdir(mode=0o700)
    (project / "data").write_text("")
    (project / "data").chmod(0o640)
    setfacl("-m", f"u:{NOBODY}:rx", str(project))
    setfacl("-m", f"u:{NOBODY}:r", str(project / "data"))
    (added,) = [d for d in guard([entry(project / "data")], NOBODY, NOGROUP, ()) if d.path == str(project)]
    assert added.mode == 0o750 and added.acl  # the ACL's mask is the group bits; the ACL goes to the node
    closed = open_dir / "closed"
    closed.write_text("")
    closed.chmod(0o644)
    setfacl("-m", f"u:{NOBODY}:-", str(closed))
    with pytest.raises(AccessDenied, match="closed: permission denied"):
        guard([entry(closed)], NOBODY, NOGROUP, ())
    assert readable([str(project / "data"), str(closed)], NOBODY, NOGROUP, ()) == [str(project / "data")]


def test_a_directory_whose_mode_looks_like_a_nodes_default_still_brings_its_acl(open_dir):
    """root:0755 with `setfacl -m u:nobody:-`: the mode bits are what a node makes anyway, the ACL is not;
    root's job brings the directory so that nobody's later job on that node finds it closed too."""
    data = open_dir / "data"
    data.mkdir(mode=0o755)
    (data / "table").write_text("")
    setfacl("-m", f"u:{NOBODY}:-", str(data))
    assert os.stat(data).st_mode & 0o7777 == 0o755
    (added,) = [d for d in guard([entry(data / "table")], 0, 0, ()) if d.path == str(data)]
    assert (added.mode, added.uid, added.acl) == (0o755, 0, jobaccess.acl_of(str(data))) and added.acl
    with pytest.raises(AccessDenied, match=f"{data}: permission denied.*search"):
        guard([entry(data / "table")], NOBODY, NOGROUP, ())


def test_only_the_checking_thread_takes_the_users_identity_and_it_is_given_back(open_dir):
    secret = open_dir / "secret"
    secret.write_text("")
    secret.chmod(0o600)
    seen_elsewhere, asked = [], threading.Event()

    def other_thread():  # started before: a thread made inside the view would be born with its identity
        asked.wait()
        seen_elsewhere.append(os.access(secret, os.R_OK, effective_ids=True))

    other = threading.Thread(target=other_thread)
    other.start()
    with UserView(NOBODY, NOGROUP, ()) as view:
        assert view.active and not view.may(str(secret), READ)
        asked.set()
        other.join()
    assert seen_elsewhere == [True]  # the other thread stayed root meanwhile
    assert os.access(secret, os.R_OK, effective_ids=True) and open(secret).read() == ""  # root again here
    with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
        fields = dict(line.split(":", 1) for line in f.read().splitlines())
    assert fields["Uid"].split() == ["0"] * 4 and fields["Gid"].split() == ["0"] * 4


def test_mode_bits_decide_where_no_per_thread_identity_is_possible(open_dir, monkeypatch):
    monkeypatch.setattr(jobaccess, "CREDENTIAL_CALLS", {})
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    (private / "f").write_text("")
    with pytest.raises(AccessDenied, match=f"{private}: permission denied.*search"):
        guard([entry(private / "f")], NOBODY, NOGROUP, ())
    assert readable([str(private / "f"), str(open_dir)], NOBODY, NOGROUP, ()) == [str(open_dir)]


def test_may_reach_follows_the_directories_above(tmp_path):
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
