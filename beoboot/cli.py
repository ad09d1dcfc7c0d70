"""`beoboot-build`: one sub-command a module in beoboot.commands; errors leave through one door here."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import NoReturn

from beoboot import __version__, log
from beoboot.errors import BeobootError

# Each module has register(subparsers) -> None and sets `func` on its parser via set_defaults(func=run).
COMMAND_MODULES = ("build", "config", "deps", "modules", "nics", "inspect", "why", "boot")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beoboot-build", description="Build network-boot images for a cluster.")
    parser.add_argument("--version", action="version", version=f"beoboot {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"beoboot.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"beoboot.commands.{name}":
                raise
            continue
        module.register(sub)
    # -q and --debug work before or after the sub-command; SUPPRESS keeps a sub-command's default from
    # overwriting a value given before it.
    for subparser in sub.choices.values():
        subparser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so a killed build removes its staging directory and no partial file.
    raise KeyboardInterrupt


def run(argv: list[str] | None = None) -> NoReturn:
    """The command's entry point: main() with the process's signals set as a command-line tool wants.

    Kept apart from main() so that calling main() in-process (tests) leaves the caller's signals alone:
    a test process with SIGPIPE at its default dies silently on its next write to a closed socket."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `beoboot-build nics | head` ends quietly, as cat would
    sys.exit(main(argv))


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    log.setup(quiet=args.quiet, debug=args.debug)
    try:
        return int(args.func(args) or 0)
    except BeobootError as exc:
        if args.debug:
            raise
        print(f"beoboot-build: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("beoboot-build: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    run()
