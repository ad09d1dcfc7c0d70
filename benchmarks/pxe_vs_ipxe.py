#!/usr/bin/env python3
"""Network boot of the same stage-2 payload two ways, side by side in one run: seconds from QEMU start to
`beoboot: stage 2 agent up` for BIOS PXE over TFTP (pxelinux, QEMU's built-in TFTP server) vs iPXE over
HTTP (QEMU's iPXE NIC ROM fetching pxe/boot.ipxe, the kernel and the initrd from nginx), plus the sizes
of what travels, from the manifest. QEMU runs under TCG, so absolute times are those of an emulated CPU.

    .venv/bin/python benchmarks/pxe_vs_ipxe.py [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from beoboot import config, log
from beoboot.artifacts import parse_node_range, write_server_configs
from beoboot.image import builder
from beoboot.image.manifest import MANIFEST_NAME, Manifest
from beoboot.vm import bootvm

MARKER = "beoboot: stage 2 agent up"
WAYS = {"PXE/TFTP (pxelinux)": bootvm.NetBoot.PXELINUX, "iPXE/HTTP (boot.ipxe)": bootvm.NetBoot.IPXE}
TRAVELS = (
    "pxe/pxelinux.0",
    "pxe/ldlinux.c32",
    "pxe/pxelinux.cfg/default",
    "pxe/boot.ipxe",
    "pxe/vmlinuz",
    "pxe/initrd.img",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_master(out: Path, port: int, scratch: Path) -> Iterator[str]:
    """nginx (what a master runs) on 127.0.0.1:port serving `out`; Python's http.server if nginx is missing."""
    if shutil.which("nginx") is None:
        with bootvm.serve_directory(out, port):
            yield "Python http.server (nginx not installed)"
        return
    _, conf = write_server_configs(
        scratch / "conf",
        node_range=parse_node_range("10.0.2.100-10.0.2.199"),
        proxy_dhcp=False,
        http_root=out,
        master_url=f"http://10.0.2.2:{port}/",
        mtime=0,
        http_listen=f"127.0.0.1:{port}",
        nginx_user="root",
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
    try:
        deadline = time.monotonic() + 10
        while not bootvm.port_in_use(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield "nginx"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="boots per way (default 1); the median is shown")
    args = parser.parse_args()
    log.setup(quiet=True)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="beoboot-bench-") as tmp:
        out = Path(tmp) / "out"
        site = Path(tmp) / "site.toml"
        site.write_text(f'[build]\nmaster_url = "http://10.0.2.2:{port}/"\n')
        builder.build(config.load(str(site)), out)
        sizes = {a.path: a.size for a in Manifest.from_json((out / MANIFEST_NAME).read_text()).artifacts}
        seconds: dict[str, list[float]] = {name: [] for name in WAYS}
        with http_master(out, port, Path(tmp)) as server:
            for _ in range(args.runs):
                for name, way in WAYS.items():  # interleaved, so a busy moment hurts both ways alike
                    plan = bootvm.plan_artifact(out / "pxe", bootvm.BootOptions(net_boot=way))
                    result = bootvm.boot(plan, MARKER, timeout=240)
                    if not result.matched:
                        print(f"{name}: no marker in {result.seconds:.0f} s\n{result.console[-3000:]}", file=sys.stderr)
                        return 1
                    seconds[name].append(result.seconds)
    print(f"QEMU (TCG) start to {MARKER!r}; HTTP by {server}; {args.runs} run(s) each, median")
    names = list(WAYS)
    print(f"{'':28s}" + "".join(f"{n:>24s}" for n in names))
    print(f"{'seconds':28s}" + "".join(f"{statistics.median(seconds[n]):24.1f}" for n in names))
    if args.runs > 1:
        print(f"{'all runs':28s}" + "".join(f"{' '.join(f'{s:.1f}' for s in seconds[n]):>24s}" for n in names))
    pxe, ipxe = (statistics.median(seconds[n]) for n in names)
    print(f"{'iPXE / PXE':28s}{ipxe / pxe:24.2f}")
    print("\nartifact sizes (manifest):")
    for path in TRAVELS:
        if path in sizes:
            print(f"  {path:28s}{sizes[path]:>14,d} B  {sizes[path] / 2**20:7.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
