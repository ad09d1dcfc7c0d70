"""What a node's next boot would change: what it booted (its registration's Booted: kernel release, image
hashes) beside the build beoserv publishes now (manifest.json). A rebuild that changed stage 3 marks every
node that booted the old one; bpstat shows the mark.

Only what the node knows is compared: its kernel's release (a rebuilt kernel of the same release is not
seen) and the images it checked by hash (stage 3, the environment root). The stage-2 ramdisk a PXE loader
fetched was checked by no one, so the node cannot say which it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.protocol import Booted

KERNEL = "kernel"


@dataclass(frozen=True)
class PublishedBoot:
    """What a node booting now would get, from the published manifest."""

    kernel: str = ""  # the manifest's kernel_version
    images: dict[str, str] = field(default_factory=dict)  # image name -> sha256


def from_manifest(raw: Any) -> PublishedBoot:
    """The boot facts of a manifest.json's content (what beoboot.image.manifest writes); what it lacks is
    left out, so a partial manifest compares what it has."""
    kernel = raw.get("kernel_version") if isinstance(raw, dict) else None
    artifacts = raw.get("artifacts") if isinstance(raw, dict) else None
    images = {}
    for artifact in artifacts if isinstance(artifacts, list) else ():
        if (
            isinstance(artifact, dict)
            and isinstance(artifact.get("name"), str)
            and isinstance(artifact.get("sha256"), str)
        ):
            images[artifact["name"]] = artifact["sha256"]
    return PublishedBoot(kernel if isinstance(kernel, str) else "", images)


def changes(booted: Booted, published: PublishedBoot | None) -> tuple[str, ...] | None:
    """The names (kernel, then images by name) whose published version differs from what the node booted;
    () for none; None when it is not known: nothing published, or the node named no image it checked."""
    if published is None or not booted.images:
        return None
    changed = []
    if booted.kernel and published.kernel and booted.kernel != published.kernel:
        changed.append(KERNEL)
    for name in sorted(booted.images):
        now = published.images.get(name)
        if now is not None and now != booted.images[name]:
            changed.append(name)
    return tuple(changed)
