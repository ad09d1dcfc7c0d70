"""beoserv serves the published build only: its manifest.json and the files it lists, read through
OUTDIR/current, a new build seen without a restart; never an unfinished build, a dot directory or a file
the manifest does not list."""

import hashlib
import json
import os
import shutil

import pytest
import requests
from conftest import run_beoboot
from master_helpers import MasterProcess, publish_files


@pytest.fixture
def master_of(tmp_path):
    started = []

    def start(root):
        started.append(MasterProcess(root, tmp_path / "nodes.db", tmp_path / "beoserv.log").start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


def get(master, path, **kwargs):
    return requests.get(f"{master.url}/{path}", timeout=10, **kwargs)


def assert_not_published(master, *paths):
    for path in paths:
        response = get(master, path)
        assert response.status_code == 404 and "not published" in response.text, (path, response.status_code)


@pytest.mark.integration
def test_a_real_build_is_served_as_listed_and_a_rebuild_without_restart(built, tmp_path, master_of):
    outdir = tmp_path / "out"
    shutil.copytree(built, outdir, symlinks=True, copy_function=os.link)
    image = (outdir / "stage1.cpio.xz").read_bytes()
    for leftover in (".beoboot-staging-4242", ".builds/unfinished-4243", ".git"):  # killed builds, a dot dir
        (outdir / leftover).mkdir(parents=True)
        (outdir / leftover / "stage1.cpio.xz").write_bytes(image)
    (outdir / "notes.txt").write_text("not for the nodes\n")
    master = master_of(outdir)
    manifest = get(master, "manifest.json").json()
    for art in manifest["artifacts"]:  # every file a node or a boot loader fetches, pxe/ tree included
        response = get(master, art["path"])
        assert response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == art["sha256"], art
    part = get(master, "stage2.cpio.xz", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == (outdir / "stage2.cpio.xz").read_bytes()[100:200]
    assert_not_published(
        master,
        ".beoboot-staging-4242/stage1.cpio.xz",
        ".builds/unfinished-4243/stage1.cpio.xz",
        ".git/stage1.cpio.xz",
        "notes.txt",
        "pxe",
    )
    build_id = os.readlink(outdir / "current").rsplit("/", 1)[-1]
    assert_not_published(master, f".builds/{build_id}/vmlinuz", "current/vmlinuz")  # only by the names users know

    site = tmp_path / "site.toml"
    site.write_text('[images.stage1]\ncompression = "gzip"\n')
    run_beoboot("build", "-q", "-c", site, "-o", outdir)
    rebuilt = get(master, "manifest.json").json()
    assert rebuilt != manifest and rebuilt == json.loads((outdir / "manifest.json").read_text())
    stage1 = next(a for a in rebuilt["artifacts"] if a["name"] == "stage1")
    response = get(master, stage1["path"])
    assert stage1["path"] == "stage1.cpio.gz" and hashlib.sha256(response.content).hexdigest() == stage1["sha256"]
    assert_not_published(master, "stage1.cpio.xz", ".builds/unfinished-4243/stage1.cpio.xz")


def test_unlisted_files_links_out_and_dot_paths_are_not_published(tmp_path, master_of):
    root = tmp_path / "boot"
    (tmp_path / "secret").write_text("the master's own file\n")
    build = publish_files(root, {"stage3.cpio": b"3" * 5000, "pxe/boot.ipxe": b"#!ipxe\n", "escape": "../../../secret"})
    (build / "unlisted.bin").write_bytes(b"x")  # in the build's own directory, but not in its manifest
    master = master_of(root)
    assert get(master, "pxe/boot.ipxe").content == b"#!ipxe\n"
    part = get(master, "stage3.cpio", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == b"3" * 10
    assert_not_published(master, "escape", "unlisted.bin", "pxe/../escape", "%2e%2e/secret", "missing")
    publish_files(root, {"stage3.cpio": b"new"})  # a new build, seen at once
    assert get(master, "stage3.cpio").content == b"new"
    assert_not_published(master, "pxe/boot.ipxe")


def test_a_download_in_flight_finishes_with_its_own_build_while_newer_ones_are_published(tmp_path, master_of):
    root = tmp_path / "boot"
    first = os.urandom(32 << 20)  # more than the socket buffers hold: most of it is read after the switch
    old_build = publish_files(root, {"stage3.cpio": first})
    master = master_of(root)
    with requests.get(f"{master.url}/stage3.cpio", stream=True, timeout=30) as response:
        chunks = response.iter_content(1 << 16)
        received = [next(chunks)]
        publish_files(root, {"stage3.cpio": b"second"})
        publish_files(root, {"stage3.cpio": b"third"})
        assert not old_build.exists()  # only the newest build and the one before it are kept
        received += list(chunks)
    assert b"".join(received) == first
    assert get(master, "stage3.cpio").content == b"third"
