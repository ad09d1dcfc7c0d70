"""`beoboot-build why IMAGE PATH`: the chain of reasons that put PATH into IMAGE."""

from __future__ import annotations

import argparse
from pathlib import Path

from beoboot.image.inspect import why_chain
from beoboot.image.manifest import manifest_for_image


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("why", help="explain why a path is in an image")
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("path", metavar="PATH", help="a path inside the image")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest, artifact = manifest_for_image(Path(args.image))
    chain = why_chain(manifest.images.get(artifact.name, []), args.path)
    for depth, record in enumerate(chain):
        source = "" if record.source in ("generated", record.kind) else f"  [from {record.source}]"
        print(f"{'  ' * depth}{record.path}: {record.reason}{source}")
    return 0
