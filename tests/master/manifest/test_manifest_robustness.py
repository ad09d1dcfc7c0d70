"""beoboot.master.manifest.describe against what a user can hand beoserv: a file they may not read, a FIFO, and tree after
tree. Each case is one that a review of beoserv found (reproductions: objects_oracle.sh, fifo_hang.sh,
cache_growth.sh).

The files are real and lie in a directory anyone may search (pytest's own tmp_path lies under root's 0700
directory), because the checks ask the kernel as the user."""

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from agent import protocol as p
from beoboot.master.manifest import describe as jobmanifest
from beoboot.master.manifest.access import AccessDenied
from beoboot.master.manifest.describe import JobError, ManifestBuilder
from beoboot.master.manifest.sourcecache import read_text
from beoboot.master.manifest.sourcewatch import HUB
from beoboot.master.objects import ObjectStore, key_of

NOBODY, NOGROUP = 65534, 65534
PATH = "/usr/bin:/bin"

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="jobs of other users: needs root, as beoserv has")


@pytest.fixture
def open_dir():
    path = Path(tempfile.mkdtemp(prefix="beoboot-manifest-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def nobodys(*argv: str, cache: tuple[str, ...] = ()) -> p.JobRequest:
    return p.JobRequest("0", argv, {"PATH": PATH}, "/", NOBODY, NOGROUP, cache=cache)


def secret_in(directory: Path, text: str = "pin=4711\n") -> tuple[Path, str]:
    """A root-only file and the sha256 a prober would guess for it."""
    secret = directory / "secret"
    secret.write_text(text)
    secret.chmod(0o600)
    return secret, hashlib.sha256(text.encode()).hexdigest()


# --- a refused job leaves no trace of what it named ------------------------------------------------------


def test_a_refused_cache_file_is_never_hashed_so_its_hash_cannot_be_probed(open_dir):
    secret, guessed = secret_in(open_dir)
    store = ObjectStore()
    builder = ManifestBuilder(store)
    builder.build(nobodys("/bin/true"))  # the program's own closure: nobody may have it
    hashed = store.hashed
    with pytest.raises(AccessDenied, match=f"{secret}: permission denied"):
        builder.build(nobodys("/bin/true", cache=(str(secret),)))
    assert store.lookup(guessed) is None
    assert store.hashed == hashed  # nothing of the refused request was read


def test_a_link_swapped_in_after_the_check_does_not_get_roots_file_hashed(open_dir, monkeypatch):
    """nobody's own file passes the access check; in the moment before it is hashed, nobody (who may write
    that directory) puts a link to root's secret in its place. The hashing opens the file as nobody,
    without following a last link: the job is refused, and the secret never reaches the store."""
    secret, guessed = secret_in(open_dir)
    home = open_dir / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOGROUP)
    mine = home / "data"
    mine.write_text("nobody's own\n")
    os.chown(mine, NOBODY, NOGROUP)
    checked = jobmanifest.guard_contents

    def check_then_swap(paths, *args, **kwargs):
        checked(paths, *args, **kwargs)
        if str(mine) in paths:
            mine.unlink()
            mine.symlink_to(secret)  # as nobody could: the directory is theirs

    monkeypatch.setattr(jobmanifest, "guard_contents", check_then_swap)
    store = ObjectStore()
    with pytest.raises(AccessDenied, match=f"{mine}: changed while it was checked"):
        ManifestBuilder(store).build(nobodys("/bin/true", cache=(str(mine),)))
    assert store.lookup(guessed) is None


def test_a_refused_file_in_a_private_directory_is_named_by_the_directory_and_never_hashed(open_dir):
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    secret, guessed = secret_in(private)
    store = ObjectStore()
    with pytest.raises(AccessDenied, match=f"{private}: permission denied.*search"):
        ManifestBuilder(store).build(nobodys("/bin/true", cache=(str(secret),)))
    assert store.lookup(guessed) is None


def test_a_command_the_user_may_not_read_is_refused_before_it_is_hashed(open_dir):
    text = "#!/bin/sh\necho pin=4711\n"
    script = open_dir / "job"
    script.write_text(text)
    script.chmod(0o700)  # root's: root may run it, nobody may not read it
    store = ObjectStore()
    with pytest.raises(AccessDenied, match=f"{script}: permission denied"):
        ManifestBuilder(store).build(nobodys(str(script)))
    assert store.lookup(hashlib.sha256(text.encode()).hexdigest()) is None


def test_root_and_a_user_who_may_read_still_get_the_file(open_dir):
    secret, guessed = secret_in(open_dir)
    store = ObjectStore()
    builder = ManifestBuilder(store)
    root = p.JobRequest("0", ("/bin/true",), {"PATH": PATH}, "/", 0, 0, cache=(str(secret),))
    assert any(f.sha256 == guessed for f in builder.build(root).files)
    os.chown(secret, NOBODY, NOGROUP)
    builder = ManifestBuilder(ObjectStore())
    assert any(f.sha256 == guessed for f in builder.build(nobodys("/bin/true", cache=(str(secret),))).files)


# --- a FIFO never blocks beoserv ---------------------------------------------------------------------------


def within(seconds: float, call):
    """call()'s result or exception, or a failure when it is still blocked after `seconds` (its thread is
    left behind, a daemon: a FIFO nobody writes)."""
    outcome: list = []

    def run():
        try:
            outcome.append(("value", call()))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome.append(("raised", exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still blocked after {seconds} s: a FIFO was opened for reading"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


@pytest.fixture
def fifo(open_dir):
    path = open_dir / "fifo"
    os.mkfifo(path, 0o777)
    yield path
    try:  # unblock a reader the code under test left waiting, so that its thread ends
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def test_a_fifo_as_the_command_is_refused_by_name_without_blocking(fifo):
    builder = ManifestBuilder(ObjectStore())
    with pytest.raises(JobError, match=f"{fifo}: not a regular file"):
        within(5, lambda: builder.build_cached(nobodys(str(fifo))))
    with pytest.raises(JobError, match=f"{fifo}: not a regular file"):
        within(5, lambda: builder.build(nobodys(str(fifo))))


def test_a_fifo_as_a_scripts_interpreter_is_refused_by_name_without_blocking(open_dir, fifo):
    os.mkfifo(open_dir / "env", 0o777)  # '#!.../env NAME': env_command() takes it for env(1)
    for line in (f"#!{fifo}", f"#!{open_dir}/env python3"):
        script = open_dir / "job"
        script.write_text(f"{line}\n")
        script.chmod(0o755)
        builder = ManifestBuilder(ObjectStore())
        with pytest.raises(JobError, match="not a regular file"):
            within(5, lambda: builder.build(nobodys(str(script))))


def test_a_fifo_given_to_a_shell_or_brought_by_cache_is_passed_by(fifo):
    builder = ManifestBuilder(ObjectStore())
    manifest = within(5, lambda: builder.build(nobodys("/bin/sh", str(fifo), cache=(str(fifo.parent),))))
    assert str(fifo) not in {f.path for f in manifest.files}
    assert within(5, lambda: read_text(str(fifo), key_of(str(fifo)), 1000)) == ""  # a Python or Perl source


# --- caches stay bounded ------------------------------------------------------------------------------------


def tree_of(directory: Path, subdirectories: int) -> Path:
    directory.mkdir(mode=0o755)
    for n in range(subdirectories):
        (directory / f"d{n}").mkdir(mode=0o755)
    return directory


def test_a_refused_request_keeps_no_described_tree_and_no_watch(open_dir):
    secret, _ = secret_in(open_dir)
    tree = tree_of(open_dir / "tree", 50)
    builder = ManifestBuilder(ObjectStore())
    before = HUB.watched_directories()
    with pytest.raises(AccessDenied):
        builder.build(nobodys("/bin/true", cache=(str(tree), str(secret))))
    assert str(tree) not in builder._extras and str(secret) not in builder._extras
    assert HUB.watched_directories() <= before


def test_described_trees_beyond_the_limit_go_least_recently_used_first_with_their_watches(open_dir, monkeypatch):
    monkeypatch.setattr(jobmanifest, "MAX_DESCRIBED_TREES", 2 + 3)  # each job's time zone and terminfo, 3 trees
    trees = [tree_of(open_dir / f"t{n}", 10) for n in range(5)]
    builder = ManifestBuilder(ObjectStore())
    before = HUB.watched_directories()
    for tree in trees[:3]:
        builder.build(nobodys("/bin/true", cache=(str(tree),)))
    builder.build(nobodys("/bin/true", cache=(str(trees[0]),)))  # used again: now the most recent
    for tree in trees[3:]:
        builder.build(nobodys("/bin/true", cache=(str(tree),)))
    assert {path for path in builder._extras if path.startswith(str(open_dir))} == {
        str(trees[0]),
        str(trees[3]),
        str(trees[4]),
    }
    assert HUB.watched_directories() - before <= 3 * 11
