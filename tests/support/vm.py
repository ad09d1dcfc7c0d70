"""A QEMU node running in the background while a test talks to the master: console to a file, waits on it."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


class BackgroundVM:
    def __init__(self, cmd: list[str], console: Path) -> None:
        self.console_path = console
        self._out = open(console, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT)

    def console(self) -> str:
        return self.console_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 240, after: int = 0) -> re.Match[str]:
        """The first match of `pattern` at or after console offset `after`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = regex.search(self.console(), after)
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.25)
        raise AssertionError(f"no {pattern!r} on the node's console within {timeout} s:\n{self.console()[-5000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._out.close()

    def __enter__(self) -> BackgroundVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
