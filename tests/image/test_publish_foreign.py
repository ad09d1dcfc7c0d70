"""Publishing into an output directory an older beoboot filled (plain files, its manifest listing them):
its directories go whole only when they hold nothing but that build's artifacts. Quick: the builder's
publishing code on small hand-made builds, not a real build."""

import json

import pytest

from beoboot.errors import OutputError
from beoboot.image.outputs import Staging

ARTIFACTS = ["pxe/pxelinux.cfg/default", "vmlinuz"]


def write_build(directory, text):
    for path in ARTIFACTS:
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_text(f"{text} {path}\n")
    manifest = {"artifacts": [{"path": path} for path in ARTIFACTS], "built": text}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def publish(outdir, text):
    with Staging(outdir) as staging:
        write_build(staging.path, text)
        staging.publish("manifest.json")


@pytest.fixture
def older_layout(tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    write_build(outdir, "old")
    return outdir


def test_an_administrators_file_in_an_older_layouts_directory_stops_the_build_and_stays(older_layout):
    per_mac = older_layout / "pxe/pxelinux.cfg/01-52-54-00-12-34-56"
    per_mac.write_text("the administrator's config for one node\n")
    with pytest.raises(OutputError, match="pxe/pxelinux.cfg/01-52-54-00-12-34-56"):
        publish(older_layout, "new")
    assert per_mac.read_text() == "the administrator's config for one node\n"
    assert json.loads((older_layout / "manifest.json").read_text())["built"] == "old"  # nothing published
    assert (older_layout / "pxe/pxelinux.cfg/default").read_text() == "old pxe/pxelinux.cfg/default\n"


def test_an_older_layout_holding_only_its_artifacts_is_replaced_whole(older_layout):
    publish(older_layout, "new")
    assert json.loads((older_layout / "manifest.json").read_text())["built"] == "new"
    assert (older_layout / "pxe").is_symlink()
    assert (older_layout / "pxe/pxelinux.cfg/default").read_text() == "new pxe/pxelinux.cfg/default\n"
