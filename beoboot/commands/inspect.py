"""`beoboot-build inspect IMAGE`: the contents of an image with sizes, grouped by why they are there."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from beoboot.image.inspect import group_by_reason
from beoboot.image.manifest import manifest_for_image


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("inspect", help="list an image's files with sizes, grouped by reason")
    parser.add_argument("image", metavar="IMAGE", help="an image in a beoboot-build output directory")
    parser.add_argument("--summary", action="store_true", help="only one line per group")
    parser.add_argument("--json", action="store_true", help="print the groups as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest, artifact = manifest_for_image(Path(args.image))
    records = manifest.images.get(artifact.name, [])
    groups = group_by_reason(records)
    if args.json:
        print(
            json.dumps(
                [{"reason": g.reason, "size": g.size, "files": [asdict(f) for f in g.files]} for g in groups], indent=1
            )
        )
        return 0
    total = sum(g.size for g in groups)
    print(
        f"{args.image}: {len(records)} entries, {total / 2**20:.2f} MiB uncompressed, "
        f"{artifact.size / 2**20:.2f} MiB {artifact.compression or ''}".rstrip()
    )
    for group in groups:
        print(f"{group.size / 1024:10.1f} KiB  {len(group.files):4d}  {group.reason}")
        if not args.summary:
            for record in sorted(group.files, key=lambda r: r.path):
                extra = f" -> {record.target}" if record.target else ""
                print(f"{record.size / 1024:16.1f} KiB  {record.path}{extra}")
    for fw in manifest.missing_firmware.get(artifact.name, []):
        print(f"missing firmware: {fw['module']} asks for {fw['name']}, not in the sysroot (Debian: {fw['package']})")
    return 0
