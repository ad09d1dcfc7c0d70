"""stage3.rootpaths on its own: which links a path of the environment root is walked through (only root's
choice), and which paths are never a job's (the libcache, the agent's own files), however reached."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stage3.rootpaths import AgentPathError, RootDirectories, RootPathError

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="links of other owners need chown, as the agent is root")

USER = 1000
OWN = frozenset({"etc/passwd", "etc/ld.so.preload"})


def make_root(top: Path) -> Path:
    root = top / "env"
    for directory in ("etc", ".libcache/objects", "usr/lib", "home", "tmp", "srv"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / ".libcache").chmod(0o700)
    (root / "tmp").chmod(0o1777)
    (root / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\n")
    return root


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


def link(path: Path, target: str, uid: int = 0) -> Path:
    os.symlink(target, path)
    os.lchown(path, uid, uid)
    return path


def rename_as_user(source: Path, name: str, dest: Path, new_name: str) -> None:
    """rename(2) in a child that is USER, through descriptors opened first (the test's directories above
    are root's 0700), so the kernel checks the user's permissions on these two directories only."""
    source_fd, dest_fd = os.open(source, os.O_PATH), os.open(dest, os.O_PATH)
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(USER, USER, USER)
            os.setresuid(USER, USER, USER)
            os.rename(name, new_name, src_dir_fd=source_fd, dst_dir_fd=dest_fd)
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(source_fd)
    os.close(dest_fd)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, f"uid {USER} could not rename {source / name}"


def where(root: Path, relative: str, create: bool = False) -> str:
    """The directory parent() gives for `relative`, as a path relative to the root, and the last name."""
    with RootDirectories(str(root), ".libcache", OWN) as dirs:
        fd, name = dirs.parent(relative, create=create)
        real = os.readlink(f"/proc/self/fd/{fd}")
    return os.path.relpath(real, root) + "/" + name


def test_roots_links_in_roots_directories_are_followed_inside_the_root(root):
    link(root / "lib", "usr/lib")
    link(root / "srv/abs", "/usr")
    link(root / "srv/up", "../../../../..")  # above the root is the root, as for the chrooted jobs
    assert where(root, "lib/x") == "usr/lib/x"
    assert where(root, "srv/abs/lib/x") == "usr/lib/x"
    assert where(root, "srv/up/usr/lib/x") == "usr/lib/x"
    assert where(root, "srv/up/srv/up/lib/x") == "usr/lib/x"


def test_a_users_link_is_never_followed(root):
    home = root / "home/u"
    home.mkdir()
    link(root / "srv/mine", "/usr", uid=USER)  # even in root's own directory
    with pytest.raises(RootPathError, match="a link that uid 1000 made"):
        where(root, "srv/mine/lib/x")


@pytest.mark.parametrize("owner, mode", [(USER, 0o755), (0, 0o777), (0, 0o775), (USER, 0o1777)])
def test_roots_link_where_others_may_write_is_not_roots_choice(root, owner, mode):
    """A user's home, a 0777 or group-writable directory, a user's sticky one: the user could have renamed
    root's link away and put another there (a hard link to one of root's, a link root made elsewhere)."""
    shared = root / "srv/shared"
    shared.mkdir()
    os.chown(shared, owner, owner)
    shared.chmod(mode)
    link(shared / "l", "/usr")
    with pytest.raises(RootPathError, match="others than root may write"):
        where(root, "srv/shared/l/lib/x")
    deeper = shared / "deeper"
    deeper.mkdir()  # root's 0755, but in a directory others may write: it could be swapped whole
    link(deeper / "l", "/usr")
    with pytest.raises(RootPathError, match="others than root may write"):
        where(root, "srv/shared/deeper/l/lib/x")


def test_roots_link_in_roots_directory_in_a_sticky_one_is_roots_choice(root):
    """In /tmp (1777, root's) only root may rename or unlink root's entries: a directory of root's there,
    which no user can have moved in (that needs write permission on the directory itself), is root's."""
    (root / "tmp/d").mkdir()
    link(root / "tmp/d/l", "/usr")
    assert where(root, "tmp/d/l/lib/x") == "usr/lib/x"


def test_roots_link_a_user_moved_into_a_sticky_directory_is_not_roots_choice(root):
    """Root's link in a user's home (a manifest brings `~/scratch -> /etc` with the owner the
    administrator gave it on the master) is not followed there; the user renames it into /tmp, where no
    one may rename root's entries but anyone may rename one in."""
    home = root / "home/u"
    home.mkdir()
    os.chown(home, USER, USER)
    link(home / "scratch", "/etc")
    rename_as_user(home, "scratch", root / "tmp", "scratch")
    assert os.lstat(root / "tmp/scratch").st_uid == 0 and os.lstat(root / "tmp/scratch").st_nlink == 1
    with pytest.raises(RootPathError, match="others than root may write"):
        where(root, "tmp/scratch/nsswitch.conf")


@pytest.mark.skipif(not shutil.which("setfacl"), reason="needs setfacl")
def test_an_acl_that_lets_a_user_write_counts_as_the_mode_would(root):
    """0755 root's, with `setfacl -m u:1000:rwx`: the group bits are the ACL's mask, now rwx."""
    shared = root / "srv/acl"
    shared.mkdir()
    subprocess.run(["setfacl", "-m", f"u:{USER}:rwx", str(shared)], check=True)
    link(shared / "l", "/usr")
    with pytest.raises(RootPathError, match="others than root may write"):
        where(root, "srv/acl/l/lib/x")


def test_a_hard_link_to_roots_link_is_not_roots_choice(root):
    """A user's job where fs.protected_hardlinks is off (the kernel's default) may give root's `lib ->
    usr/lib` a second name in /tmp, where its relative target names the user's /tmp/usr/lib."""
    link(root / "lib", "usr/lib")
    os.link(root / "lib", root / "tmp/lib", follow_symlinks=False)
    with pytest.raises(RootPathError, match="a link with 2 names"):  # the original, now that it has two
        where(root, "lib/x")
    with pytest.raises(RootPathError):  # the second name: in /tmp too, where no link is root's choice
        where(root, "tmp/lib/x")


@pytest.mark.parametrize(
    "path", ["etc/passwd", "srv/e/passwd", "srv/up/../etc/ld.so.preload", "srv/c/objects/x", ".libcache/x", "srv/c"]
)
def test_the_nodes_own_paths_are_refused_however_reached(root, path):
    link(root / "srv/e", "/etc")
    link(root / "srv/up", "../usr/../..")
    link(root / "srv/c", "../.libcache")
    with pytest.raises(AgentPathError):
        where(root, path + ("/x" if path == "srv/c" else ""))
    with RootDirectories(str(root), ".libcache", OWN) as dirs, pytest.raises(AgentPathError):
        dirs.check(path + ("/x" if path == "srv/c" else ""))


def test_a_link_to_an_own_file_is_a_name_of_its_own(root):
    """The last component is never followed: a link at home/pw -> /etc/passwd is the path home/pw."""
    link(root / "home/pw", "/etc/passwd")
    assert where(root, "home/pw") == "home/pw"


def test_check_makes_nothing_and_lets_other_problems_wait(root):
    link(root / "home/x", "/etc", uid=USER)
    with RootDirectories(str(root), ".libcache", OWN) as dirs:
        dirs.check("opt/new/dir/file")  # missing: placing it makes it
        dirs.check("home/x/passwd")  # through a user's link: placing it fails, or a directory replaces it
        assert not dirs.trusts("home/x") and not dirs.trusts("srv")  # a user's link; a directory
        link(root / "lib", "usr/lib")
        assert dirs.trusts("lib")
    assert not (root / "opt").exists()


def test_forget_sees_a_directory_made_writable_since(root):
    shared = root / "srv/d"
    shared.mkdir()
    link(shared / "l", "/usr")
    with RootDirectories(str(root), ".libcache", OWN) as dirs:
        assert dirs.parent("srv/d/l/lib/x") is not None
        shared.chmod(0o777)
        dirs.forget()
        with pytest.raises(RootPathError, match="others than root may write"):
            dirs.parent("srv/d/l/lib/y")


NAMES = ["a", "b", "etc", "usr", "tmp", ".libcache", "..", "."]
TARGETS = ["/", "/etc", "..", "../..", "/.libcache", "../.libcache/objects", "a", "/tmp", "usr/lib", "b/..", "/a/b"]


@given(
    links=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "tmp/a", "usr/b", "a/b", "b/a"]),
            st.sampled_from(TARGETS),
            st.sampled_from([0, USER]),
        ),
        max_size=6,
    ),
    path=st.lists(st.sampled_from(NAMES), min_size=1, max_size=6),
    last=st.sampled_from(["passwd", "ld.so.preload", "x", "objects"]),
)
def test_any_walk_stays_inside_the_root_and_off_the_nodes_own(links, path, last):
    """Whatever links lie about, a path that is placed is placed inside the root, never in the libcache and
    never on an own file."""
    top = Path(tempfile.mkdtemp())
    try:
        root = make_root(top)
        for where_, target, uid in links:
            at = root / where_
            if at.parent.is_dir() and not os.path.lexists(at):
                link(at, target, uid)
        relative = "/".join([*path, last])
        with RootDirectories(str(root), ".libcache", OWN) as dirs:
            try:
                fd, name = dirs.parent(relative)
            except (RootPathError, OSError):
                return
            real = Path(os.readlink(f"/proc/self/fd/{fd}")) / name
        inside = real.relative_to(root)  # ValueError: outside the root
        assert not str(inside).startswith(".libcache") and str(inside) not in OWN
    finally:
        shutil.rmtree(top)
