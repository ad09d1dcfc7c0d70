"""`beoboot-build config`: print the effective config (embedded default plus -c FILE)."""

from __future__ import annotations

import argparse

from beoboot import config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="print the effective config")
    parser.add_argument("-c", "--config", metavar="FILE", help="site config (TOML) over the embedded default")
    parser.add_argument("--json", action="store_true", help="print as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    print(cfg.to_json() if args.json else config.render_toml(cfg), end="")
    return 0
