"""The boot files a stage fetches from the master: found in the master's manifest.json, checked against
the pins on the kernel command line (`beoboot.pin.NAME=SHA256`), downloaded with agent.download."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

from agent import download

MANIFEST = "manifest.json"


class BootFileError(Exception):
    pass


def pins_from_cmdline(options: dict[str, str]) -> dict[str, str]:
    """{"stage3": "ab12..."} from beoboot.pin.stage3=ab12... words."""
    return {key.removeprefix("pin."): value for key, value in options.items() if key.startswith("pin.") and value}


def fetch_manifest(master: str, dest: str, say: Callable[[str], None]) -> dict:
    download.fetch(master + MANIFEST, dest, None, log=say)
    with open(dest, encoding="utf-8") as f:
        return json.load(f)


def listed(manifest: dict, name: str) -> tuple[str, str]:
    """(path relative to the master's root, sha256) of artifact `name` in the manifest."""
    for artifact in manifest.get("artifacts", ()):
        if artifact.get("name") == name:
            return artifact["path"], artifact["sha256"]
    raise BootFileError(f"the master's {MANIFEST} lists no {name!r}: rebuild with beoboot-build on the master")


def expected(manifest: dict, name: str, pins: dict[str, str]) -> str:
    """The sha256 artifact `name` is fetched by: its pin, else (no pin on the command line) the manifest's."""
    return pins.get(name) or listed(manifest, name)[1]


def fetch(
    master: str,
    manifest: dict,
    name: str,
    dest: str,
    pins: dict[str, str],
    say: Callable[[str], None],
    mac: str | None = None,
) -> str:
    """Download artifact `name` to `dest`; refuse it (and retry) unless its sha256 is the pinned one. A
    registered node names itself (`mac`): the master's transfer slots then go round-robin by node, not by
    address, which many nodes can share (behind a NAT or a relay, or simulated on one host)."""
    path, sha256 = listed(manifest, name)
    pin = pins.get(name)
    if pin is None:
        say(f"beoboot: no pin for {name} on the command line; checking it against the master's manifest only")
    elif pin != sha256:
        say(f"beoboot: the master's manifest lists {name} as {sha256[:16]}..., not the pinned {pin[:16]}...")
    expected = pin or sha256
    say(f"beoboot: download {master}{path} (sha256 {expected[:16]}...)")
    query = f"?mac={quote(mac)}" if mac else ""
    download.fetch(master + path + query, dest, expected, log=say)
    return dest
