"""What a node's next boot would change (beoboot.master.nextboot), and the Booted a node reports."""

import pytest

from agent import protocol as p
from beoboot.master.nextboot import PublishedBoot, changes, from_manifest

OLD, NEW = "a" * 64, "b" * 64
BOOTED = p.Booted("6.1.0-57-amd64", {"stage3": OLD, "envroot": OLD})


@pytest.mark.parametrize(
    "published, expected",
    [
        (PublishedBoot("6.1.0-57-amd64", {"stage3": OLD, "envroot": OLD, "stage2": NEW}), ()),
        (PublishedBoot("6.1.0-57-amd64", {"stage3": NEW, "envroot": OLD}), ("stage3",)),
        (PublishedBoot("6.12.9-amd64", {"stage3": NEW, "envroot": NEW}), ("kernel", "envroot", "stage3")),
        (PublishedBoot("", {"stage3": OLD}), ()),  # what the build does not say is not compared
        (None, None),  # nothing published
    ],
)
def test_the_images_and_kernel_that_differ_are_named(published, expected):
    assert changes(BOOTED, published) == expected


def test_a_node_that_named_no_image_is_not_known():
    assert changes(p.Booted("6.1.0-57-amd64"), PublishedBoot("6.12.9-amd64", {"stage3": NEW})) is None


def test_the_manifest_gives_its_kernel_and_every_artifacts_hash():
    raw = {
        "kernel_version": "6.1.0-57-amd64",
        "artifacts": [{"name": "stage3", "sha256": NEW, "path": "stage3.cpio.gz"}, {"name": 3}, "junk"],
    }
    assert from_manifest(raw) == PublishedBoot("6.1.0-57-amd64", {"stage3": NEW})
    assert from_manifest([]) == PublishedBoot()


def test_booted_round_trips_and_an_older_nodes_registration_still_reads():
    request = p.RegisterRequest("52:54:00:12:34:56", p.Stage.SUPERVISOR, booted=BOOTED)
    assert p.from_json(p.RegisterRequest, p.to_json(request)) == request
    older = '{"mac": "52:54:00:12:34:56", "stage": "stage3"}'
    assert p.from_json(p.RegisterRequest, older).booted == p.Booted()


@pytest.mark.parametrize(
    "booted, complaint",
    [
        (p.Booted("6.1\n0"), r"booted.kernel: .* is not a kernel release"),
        (p.Booted("", {"stage3": "xyz"}), r"booted.images\['stage3'\]: an image name .* and a sha256"),
        (p.Booted("", {"Stage 3": OLD}), r"booted.images\['Stage 3'\]"),
        (p.Booted("", {f"i{n}": OLD for n in range(17)}), "17 images, more than 16"),
    ],
)
def test_a_booted_the_master_cannot_show_is_refused_naming_the_field(booted, complaint):
    with pytest.raises(p.ProtocolError, match=complaint):
        p.check_booted(booted)
