"""What stage 2 tells stage 3: written into the new root before the switch, read by stage 3's agent.

The network stays configured across switch_root (same kernel), so stage 3 only needs to know who it is,
where its master is, and the DHCP lease it must keep renewing (stage3.leasekeeper). The lease fields have
defaults so that a handoff written without them still loads; stage 3 then does not renew.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

HANDOFF_PATH = "/run/beoboot/handoff.json"


@dataclass(frozen=True)
class Handoff:
    master_url: str
    mac: str
    interface: str
    address: str  # "10.0.2.15/24"
    pins: dict[str, str] = field(default_factory=dict)  # what stage 3 still fetches (envroot)
    # image -> the sha256 stage 2 fetched it by and unpacked it (stage3): what this boot runs (bpstat)
    booted: dict[str, str] = field(default_factory=dict)
    server_id: str | None = None  # the DHCP server that granted the lease (option 54): where renewals go
    lease_seconds: int | None = None  # None: no lease time, nothing to renew
    renewal_seconds: int | None = None  # T1 (option 58) as the server sent it, or None
    rebinding_seconds: int | None = None  # T2 (option 59) as the server sent it, or None
    # time.monotonic() when the lease was asked for: stage 2 and stage 3 run on the same kernel
    # (switch_root, not kexec), so it is the same clock in both
    lease_obtained_at: float | None = None
    # the last /dev/kmsg record stage 2 shipped (agent.kmsg): stage 3, on the same kernel, goes on after it
    kmsg_seq: int | None = None
    dns: list[str] = field(default_factory=list)  # the lease's name servers (option 6), for resolv.conf

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Handoff:
        return cls(**json.loads(text))
