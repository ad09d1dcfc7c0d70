"""The mounts each node reported failing in its current boot (agent.protocol.MOUNT_FAILED events), for
bpstat's table: kept in memory, as a node's boot is; the events themselves are in its timeline."""

from __future__ import annotations

MAX_PER_NODE = 64  # as many as [[mounts]] may hold (beoboot.master.mountspec.MAX_MOUNTS)


class MountReports:
    def __init__(self) -> None:
        self._failed: dict[int, tuple[int, list[str]]] = {}  # node -> (boot, "TARGET: why" ...)

    def failed(self, number: int, boot: int, detail: str) -> None:
        kept_boot, details = self._failed.get(number, (boot, []))
        if kept_boot != boot:
            details = []
        if len(details) < MAX_PER_NODE:
            details.append(detail[:300])
        self._failed[number] = (boot, details)

    def failures(self, number: int, boot: int) -> tuple[str, ...]:
        kept_boot, details = self._failed.get(number, (boot, []))
        return tuple(details) if kept_boot == boot else ()
