"""`beoboot-build build`: build all images with the embedded default config or -c FILE."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from beoboot import config
from beoboot.image import builder


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("build", help="build the stage images, the kernel and manifest.json")
    parser.add_argument("-c", "--config", metavar="FILE", help="site config (TOML) over the embedded default")
    parser.add_argument("-o", "--output", metavar="OUTDIR", default="out", help="output directory (default: ./out)")
    parser.add_argument("--json", action="store_true", help="print the artifacts as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    result = builder.build(cfg, Path(args.output))
    if args.json:
        print(json.dumps([asdict(a) for a in result.manifest.artifacts], indent=1))
    elif not args.quiet:
        state = "up to date" if result.up_to_date else "built"
        for art in result.manifest.artifacts:
            print(f"{state}: {Path(args.output) / art.path}  {art.size / 2**20:.2f} MiB  sha256:{art.sha256[:16]}")
    return 0
