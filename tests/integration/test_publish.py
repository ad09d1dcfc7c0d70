"""Publishing a build is atomic. A child process stops itself (SIGSTOP) before every file-system change of
publishing; at each of those instants a reader reads OUTDIR/manifest.json and hashes every artifact it
lists through OUTDIR, and must see one whole build. Killing the child (SIGKILL) at such an instant leaves
what a crash there would, and the next build must clean it up."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, run_beoboot

pytestmark = pytest.mark.integration

# Run as `python -c STEPPER build ARGS...` (the real command line) or `publish SOURCE OUTDIR` (the builder's
# publishing code on a copy of a finished build directory).
STEPPER = r"""
import os, shutil, signal, sys
from pathlib import Path

CHANGES = {"os.rename", "os.symlink", "os.link", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"}
armed = False

def stop_before_each_change(event, args):
    global armed
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and isinstance(args[1], str):
        writing = any(c in args[1] for c in "wax+")
        if writing and not armed and os.fspath(args[0]).endswith("/manifest.json"):
            armed = True  # the builder's last write before it publishes
        elif writing and armed:
            os.kill(os.getpid(), signal.SIGSTOP)
    elif armed and event in CHANGES:
        os.kill(os.getpid(), signal.SIGSTOP)

sys.addaudithook(stop_before_each_change)
mode, *rest = sys.argv[1:]
if mode == "build":
    from beoboot.cli import run
    run(sys.argv[1:])
from beoboot.image.outputs import Staging
with Staging(Path(rest[1])) as staging:
    shutil.copytree(rest[0], staging.path, dirs_exist_ok=True, copy_function=os.link)
    armed = True
    staging.publish("manifest.json")
"""

_hashes = {}


def sha256(path):
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)  # copies are hard links: hash each file once
    if key not in _hashes:
        with open(path, "rb") as f:
            _hashes[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _hashes[key]


def published(outdir):
    """What a reader sees: the manifest, then each listed artifact through OUTDIR; None if no manifest."""
    try:
        text = (outdir / "manifest.json").read_text()
    except FileNotFoundError:
        return None
    manifest = json.loads(text)
    wrong = [
        a["path"]
        for a in manifest["artifacts"]
        if not (outdir / a["path"]).is_file() or sha256(outdir / a["path"]) != a["sha256"]
    ]
    assert not wrong, f"manifest.json and these artifacts disagree: {wrong}"
    return hashlib.sha256(text.encode()).hexdigest()


def step_through(args, outdir, tmp_path, kill_at=None, allow_unpublished=False):
    """Run the stepper; look at OUTDIR before each change (kill it at step `kill_at`). Returns the
    published manifests seen, one per step, and whether the child finished."""
    log = open(tmp_path / "stepper.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", STEPPER, *map(str, args)], cwd=ROOT, stdout=log, stderr=log)
    seen = []
    while True:
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            proc.returncode = os.waitstatus_to_exitcode(status)
            log.seek(0)
            assert proc.returncode == 0, log.read()
            return seen, True
        seen.append(published(outdir))
        assert seen[-1] is not None or allow_unpublished, f"nothing published at step {len(seen) - 1}"
        if len(seen) - 1 == kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
            proc.returncode = -signal.SIGKILL
            return seen, False
        os.kill(proc.pid, signal.SIGCONT)


def copy_outdir(source, dest, keep_links=True):
    shutil.copytree(source, dest, symlinks=keep_links, copy_function=os.link if keep_links else shutil.copy2)
    return dest


def manifest_hash(outdir):
    return hashlib.sha256((outdir / "manifest.json").read_bytes()).hexdigest()


def leftovers(outdir):
    """What no finished build owns: unfinished build directories, old staging directories, dangling links."""
    found = [p.name for p in (outdir / ".builds").glob("unfinished-*")]
    found += [p.name for p in outdir.iterdir() if p.name.startswith(".beoboot-staging-") or not p.exists()]
    return found


def finished_builds(outdir):
    return {
        p.name for p in (outdir / ".builds").iterdir() if not p.is_symlink() and not p.name.startswith("unfinished-")
    }


@pytest.fixture(scope="module")
def gzip_config(tmp_path_factory):
    site = tmp_path_factory.mktemp("gzip") / "site.toml"
    site.write_text('[images.stage1]\ncompression = "gzip"\n')  # other bytes and another file name
    return site


@pytest.fixture(scope="module")
def gzip_build(tmp_path_factory, gzip_config):
    """A second, different build, finished: its directory is published by the publishing-only tests."""
    outdir = tmp_path_factory.mktemp("gzip-out")
    run_beoboot("build", "-q", "-c", gzip_config, "-o", outdir)
    return (outdir / "current").resolve()


def test_every_instant_of_publishing_a_build_shows_one_whole_build(built, gzip_config, tmp_path):
    outdir = copy_outdir(built, tmp_path / "out")
    old = manifest_hash(outdir)
    seen, finished = step_through(["build", "-q", "-c", gzip_config, "-o", outdir], outdir, tmp_path)
    new = manifest_hash(outdir)
    assert finished and new != old and published(outdir) == new
    assert len(seen) >= 4 and seen[0] == old
    switched = seen.index(new) if new in seen else len(seen)
    assert set(seen[:switched]) == {old} and set(seen[switched:]) <= {new}  # one switch, never back
    assert not (outdir / "stage1.cpio.xz").exists() and (outdir / "stage1.cpio.gz").is_file()
    assert not leftovers(outdir)


def test_a_build_killed_while_publishing_leaves_the_old_build_and_the_next_build_cleans_up(
    built, gzip_config, tmp_path
):
    outdir = copy_outdir(built, tmp_path / "out")
    old = manifest_hash(outdir)
    seen, finished = step_through(["build", "-q", "-c", gzip_config, "-o", outdir], outdir, tmp_path, kill_at=0)
    assert not finished and seen == [old] and published(outdir) == old
    assert leftovers(outdir)  # the killed build's whole unfinished output
    result = run_beoboot("build", "-o", outdir)  # the inputs of the published build: up to date
    assert "up to date" in result.stdout
    assert not leftovers(outdir) and published(outdir) == old


def test_killed_at_any_step_of_publishing_a_whole_build_is_published_and_the_next_cleans_up(
    built, gzip_build, tmp_path
):
    # three builds: the default one (previous), the gzip one (published) and a third being published
    third = copy_outdir(gzip_build, tmp_path / "third")
    manifest = json.loads((third / "manifest.json").read_text())
    manifest["source_date_epoch"] += 1
    (third / "manifest.json").unlink()  # a hard link: the gzip build's manifest must stay as it is
    (third / "manifest.json").write_text(json.dumps(manifest))
    template = copy_outdir(built, tmp_path / "template")
    step_through(["publish", gzip_build, template], template, tmp_path)
    before, after = manifest_hash(template), manifest_hash(third)
    builds_before = finished_builds(template)
    assert len(builds_before) == 2

    count = copy_outdir(template, tmp_path / "count")
    seen, _ = step_through(["publish", third, count], count, tmp_path)
    steps = len(seen)
    assert steps >= 8  # renames, links and the removal of the oldest build, file by file
    for kill_at in range(steps):
        outdir = copy_outdir(template, tmp_path / f"kill{kill_at}")
        seen, finished = step_through(["publish", third, outdir], outdir, tmp_path, kill_at=kill_at)
        assert not finished and set(seen) <= {before, after} and published(outdir) in (before, after), kill_at
        step_through(["publish", third, outdir], outdir, tmp_path)  # the next build
        assert published(outdir) == after and not leftovers(outdir), kill_at
        builds = finished_builds(outdir)
        assert len(builds) <= 2 and builds <= builds_before | {after[:16]}, (kill_at, builds)
        shutil.rmtree(outdir)


def test_an_output_directory_copied_without_its_links_is_replaced_whole_or_not_at_all(built, gzip_build, tmp_path):
    outdir = copy_outdir(built, tmp_path / "flat", keep_links=False)  # as `cp -r` copies it
    assert not (outdir / "manifest.json").is_symlink()
    old, new = manifest_hash(outdir), manifest_hash(gzip_build)
    seen, finished = step_through(["publish", gzip_build, outdir], outdir, tmp_path, allow_unpublished=True)
    assert finished and set(seen) <= {old, new, None} and published(outdir) == new
    assert (outdir / "manifest.json").is_symlink() and (outdir / "pxe").is_symlink()
    assert not (outdir / "stage1.cpio.xz").exists()  # the copy's file the new build no longer has
    assert not leftovers(outdir)
