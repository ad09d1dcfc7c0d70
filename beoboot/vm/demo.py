"""The main job (`python3 build.py demo`): build every image and artifact with the embedded default config
into ./out, start the master (`beoserv`) on the port of the default master URL, and boot a node from the
ISO in QEMU through the whole chain: stage 1 -> kexec -> stage 2 -> stage 3, until the master lists it up."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from beoboot import config, log
from beoboot.image import builder
from beoboot.stages import PROJECT_ROOT
from beoboot.vm import qemu

NODE_UP = "beoboot: stage 3 ready: node"


def start_master(outdir: Path, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    log_file = open(workdir / "beoserv.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "beoboot.master.cli",
            "beoserv",
            "--root",
            str(outdir),
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            str(workdir / "nodes.db"),
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while b"listening on" not in (workdir / "beoserv.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"demo: beoserv did not start:\n{(workdir / 'beoserv.log').read_text()}")
        time.sleep(0.1)
    return proc


def bpstat(url: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "beoboot.master.cli", "bpstat", "--master", url, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def main() -> int:
    log.setup()
    cfg = config.load()
    outdir = PROJECT_ROOT / "out"
    result = builder.build(cfg, outdir)
    for art in result.manifest.artifacts:
        if art.kind in ("kernel", "image", "iso", "floppy"):
            print(f"{art.kind:7s} {outdir / art.path}  {art.size / 2**20:6.2f} MiB")
    port = urllib.parse.urlsplit(cfg.master_url).port or 80
    with tempfile.TemporaryDirectory(prefix="beoboot-demo-") as tmp:
        workdir = Path(tmp)
        master = start_master(outdir, port, workdir)
        url = f"http://127.0.0.1:{port}"
        try:
            print(f"master: beoserv on {url} serving {outdir}; booting a node from {outdir / 'beoboot.iso'}")
            cmd = qemu.qemu_command(extra=["-cdrom", str(outdir / "beoboot.iso"), "-nic", "user,model=e1000"])
            boot = qemu.run(cmd, [NODE_UP], timeout=300)
            for line in boot.console.splitlines():
                if line.startswith("beoboot:"):
                    print(f"  node| {line}")
            if not boot.matched:
                print(boot.console[-3000:], file=sys.stderr)
                print(f"demo: the node did not come up in {boot.seconds:.0f} s", file=sys.stderr)
                return 1
            print(f"node up after {boot.seconds:.1f} s (QEMU start to stage 3 ready, TCG)")
            print(bpstat(url), end="")
            print(bpstat(url, "--timeline", "0"), end="")
            svg = outdir / "boot-timeline.svg"
            bpstat(url, "--timeline", "0", "--svg", str(svg))
            nodes = json.loads(bpstat(url, "--json"))
            print(f"boot waterfall: {svg}")
            return 0 if any(n["state"] == "up" for n in nodes) else 1
        finally:
            master.terminate()
            master.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
