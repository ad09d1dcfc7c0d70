"""What stage 2 tells stage 3: written into the new root before the switch, read by stage 3's agent.

The network stays configured across switch_root (same kernel), so stage 3 only needs to know who it is
and where its master is.
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Handoff:
        return cls(**json.loads(text))
