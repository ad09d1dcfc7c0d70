"""The boot artifacts of a build: ISO, floppy, PXE tree and server configs, from the finished images.

Kernel command lines carry the pins: the sha256 of each image the next stage will fetch
(`beoboot.pin.NAME=HEX`, beoboot.stages.pins). The boot config that starts a stage is as trusted as the
stage itself (both come from the same medium or TFTP server), so a pin there is a pin "in" that stage, and
the images can be built side by side instead of one after the other. Which stage each medium boots is the
stages' declaration (boots_from).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.schema import KERNEL, Stage
from beoboot import stages
from beoboot.artifacts import BootPayload
from beoboot.artifacts.floppy import write_floppy
from beoboot.artifacts.iso import write_iso
from beoboot.artifacts.pxe import write_pxe_tree
from beoboot.artifacts.servers import (
    NGINX_STATE_DIR,
    DnsService,
    parse_node_range,
    write_beoserv_unit,
    write_server_configs,
)
from beoboot.config import Config
from beoboot.log import log

ISO_NAME = "beoboot.iso"
FLOPPY_NAME = "floppy.img"
PXE_DIR = "pxe"
SERVER_DIR = "server"


@dataclass(frozen=True)
class WrittenArtifact:
    kind: str  # "iso", "floppy", "pxe", "server-config"
    path: str  # relative to the build directory


def kernel_cmdline(config: Config, stage: Stage, hashes: dict[str, str]) -> str:
    """The command line of a node kernel booting `stage`: console, Python's hash seed, master, pins."""
    assert config.artifacts is not None
    words = [
        f"console={config.artifacts.console}",
        "panic=10",  # a node that panics reboots and tries again; nobody is at its console
        "loglevel=4",
        # The kernel hands unknown key=value words to init as environment: the agent's Python then needs
        # no getrandom() for its hash seed before the RNG is ready.
        "PYTHONHASHSEED=0",
        f"beoboot.master={config.master_url}",
    ]
    words += [f"beoboot.pin.{name}={hashes[name]}" for name in stages.pins(stage) if name in hashes]
    if config.artifacts.append:
        words.append(config.artifacts.append)
    return " ".join(words)


def write_all(
    config: Config, build_dir: Path, images: dict[str, Path], hashes: dict[str, str]
) -> list[WrittenArtifact]:
    """Write every artifact into `build_dir` (the staging directory); returns them sorted by path."""
    assert config.artifacts is not None
    art = config.artifacts
    kernel = images[KERNEL]

    def payload(stage: Stage) -> BootPayload:
        return BootPayload(kernel, images[stage], kernel_cmdline(config, stage, hashes))

    iso_payload = payload(Stage(art.iso_stage))
    pxe_payload = payload(stages.stage_booted_from("pxe"))
    floppy_payload = payload(stages.stage_booted_from("floppy"))
    pxe_url = f"{config.master_url}{PXE_DIR}/"
    mtime = config.source_date_epoch
    written: list[WrittenArtifact] = []

    def iso() -> list[WrittenArtifact]:
        write_iso(iso_payload, build_dir / ISO_NAME, mtime=mtime)
        return [WrittenArtifact("iso", ISO_NAME)]

    def floppy() -> list[WrittenArtifact]:
        result = write_floppy(
            floppy_payload,
            build_dir / FLOPPY_NAME,
            size_kib=art.floppy_kib,
            mode=art.floppy_mode,
            master_url=pxe_url,
            mtime=mtime,
        )
        log.info("  floppy: %s (%s)", result.kind, result.why)
        return [WrittenArtifact("floppy", FLOPPY_NAME)]

    def pxe() -> list[WrittenArtifact]:
        files = write_pxe_tree(pxe_payload, build_dir / PXE_DIR, master_url=pxe_url, mtime=mtime)
        return [WrittenArtifact("pxe", str(f.relative_to(build_dir))) for f in files]

    def servers() -> list[WrittenArtifact]:
        # The configs name where the tree will live: the final output directory, not the staging one.
        files = write_server_configs(
            build_dir / SERVER_DIR,
            node_range=parse_node_range(art.node_range),
            nodes=art.nodes,
            lease_time=art.lease_time,
            proxy_dhcp=art.proxy_dhcp,
            http_root=Path(SERVER_ROOT_PLACEHOLDER),
            tftp_root=Path(SERVER_ROOT_PLACEHOLDER) / PXE_DIR,
            master_url=pxe_url,
            mtime=mtime,
            interface=art.interface,
            state_dir=NGINX_STATE_DIR,
            installed_dir=Path(SERVER_ROOT_PLACEHOLDER) / SERVER_DIR,
            dns=DnsService(art.dns_forward, art.dns_hosts_dir) if art.dns else None,
        )
        files.append(
            write_beoserv_unit(
                build_dir / SERVER_DIR,
                nodes=art.nodes,
                beoserv=art.beoserv,
                root=Path(SERVER_ROOT_PLACEHOLDER),
                master_url=config.master_url,
                mtime=mtime,
            )
        )
        return [WrittenArtifact("server-config", str(f.relative_to(build_dir))) for f in files]

    # Each writer spends its time in pycdlib, mtools, syslinux and grub-mkimage; two at a time fill 2 cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for result in [pool.submit(fn) for fn in (iso, floppy, pxe, servers)]:
            written += result.result()
    return sorted(written, key=lambda a: a.path)


# The server configs are written before the output directory is known to be final (and must not depend
# on it, to stay reproducible): they name /srv/beoboot, where beoserv, nginx and dnsmasq find the tree.
SERVER_ROOT_PLACEHOLDER = "/srv/beoboot"
