"""The in-image config: the one schema shared by the builder (which writes it) and the agent (which reads it).

Written into every stage image as JSON at AGENT_CONFIG_PATH. Standard library only: this module runs
inside the node images.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from agent import values

AGENT_CONFIG_PATH = "/etc/beoboot/agent.json"

# Stage 3 formats a blank libcache disk (libcache_format = "blank") with MKE2FS_PATH, which the builder puts
# in its image only then, and which makes MKE2FS_FSTYPES only.
LIBCACHE_FORMATS = ("blank", "never")
MKE2FS_PATH = "/sbin/mke2fs"
MKE2FS_FSTYPES = ("ext2", "ext3", "ext4")
# What stage 3 does when the master has not answered for master_timeout seconds (Scyld's "configurable
# behavior"): reboot (as Scyld did), halt, or keep running its jobs and wait for the master for ever.
MASTER_LOST = ("reboot", "halt", "keep")


@dataclass(frozen=True)
class NicAlias:
    """One PCI modalias pattern (fnmatch style, as in modules.alias) and the driver that claims it."""

    pattern: str
    module: str


@dataclass(frozen=True)
class AgentConfig:
    version: str  # beoboot version that built the image
    stage: str  # the agent.schema.Stage this image is, one that runs the agent
    program: str  # the module whose main(config, dry_run=...) is the stage's work, e.g. "stage2.pxe"
    kernel_version: str
    # PCI NIC table, most specific patterns first is not required: the agent tries every match.
    nic_table: tuple[NicAlias, ...] = ()
    # module name -> archive paths of the .ko files to load, dependencies first, the module itself last.
    module_load_order: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # modules to load unconditionally at start (not NIC drivers): names, keys of module_load_order
    modules_at_start: tuple[str, ...] = ()
    master_url: str | None = None
    # Stage 3 reboots the node when the master has not answered for this long (Scyld: 30 s).
    master_timeout: float = 30.0
    master_lost: str = "reboot"  # one of MASTER_LOST
    # Stage 3's libcache: least recently used objects no running job holds are evicted past this size.
    libcache_max_bytes: int = 512 << 20
    # "" keeps the environment root and its libcache in RAM (tmpfs); a block device ("/dev/vdb") holding an
    # `libcache_fstype` filesystem puts both on that local disk, where cached objects also outlive a reboot
    libcache_disk: str = ""
    libcache_fstype: str = "ext4"
    # "blank": a libcache disk that does not mount and is all zeros at both ends is formatted as
    # libcache_fstype (MKE2FS_FSTYPES only); "never": it is left alone and the node runs from RAM
    libcache_format: str = "blank"
    # Smoke mode: print the "agent up" marker and power off instead of doing the stage's work.
    power_off_when_up: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> AgentConfig:
        raw = json.loads(text)
        raw["nic_table"] = tuple(NicAlias(**row) for row in raw.get("nic_table", ()))
        raw["module_load_order"] = {k: tuple(v) for k, v in raw.get("module_load_order", {}).items()}
        raw["modules_at_start"] = tuple(raw.get("modules_at_start", ()))
        config = cls(**raw)
        config.check()
        return config

    def check(self) -> None:
        """ValueError for a value the agent cannot run with: JSON carries NaN and Infinity, and a watchdog
        of NaN seconds never fires."""
        for key, check in (
            ("master_timeout", lambda v: values.number(v, 1, 86400)),
            ("master_url", lambda v: v is None or values.http_url(v)),
            ("master_lost", _master_lost),
            ("libcache_max_bytes", lambda v: values.whole(v, 1, 1 << 50, "a number of bytes")),
        ):
            value = getattr(self, key)
            try:
                check(value)
            except ValueError as exc:
                raise ValueError(f"{key} = {value!r}: expected {exc}") from None


def _master_lost(value: object) -> str:
    if value not in MASTER_LOST:
        raise ValueError("one of " + ", ".join(map(repr, MASTER_LOST)))
    return str(value)
