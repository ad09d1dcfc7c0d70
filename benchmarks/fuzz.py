#!/usr/bin/env python3
"""Run every parser's fuzz properties (tests/**/test_fuzz_*.py) with a long budget.

The suite runs the same Hypothesis properties with 150 examples each; this runs them with 20,000
(`--examples N` to change it) and prints each property's time, so a parser that is slow on some input
shows here. Any bytes must give a result or the parser's typed error, in bounded time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="examples per property (default 20000)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, e.g. -k elf")
    args = parser.parse_args()
    env = {**os.environ, "BEOBOOT_FUZZ": "long", "BEOBOOT_FUZZ_EXAMPLES": str(args.examples)}
    files = sorted(str(p) for p in (ROOT / "tests").rglob("test_fuzz_*.py"))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "--durations=0",
        "-p",
        "no:cacheprovider",
        *files,
        *args.pytest_args,
    ]
    return subprocess.run(command, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
