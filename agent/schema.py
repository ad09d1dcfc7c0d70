"""The stages of a boot, as one enum shared by the builder, the agent and the master.

What each stage is (what it fetches, who unpacks its image, its directories, overlay and program) is
declared in stages/NAME.toml and read by beoboot.stages on the build host; a node has only this module.
Standard library only: it runs inside the node images.
"""

from __future__ import annotations

import enum

# The manifest's name for the node kernel, which a stage fetches like an image (stage 1 kexecs into it).
KERNEL = "kernel"


class Stage(enum.StrEnum):
    """The images of a boot, in the order a node runs them; each is also its image's name in the manifest
    and its file name in stages/."""

    BOOSTER = "stage1"
    PXE = "stage2"
    SUPERVISOR = "stage3"
    ENVROOT = "envroot"  # the environment root jobs see: unpacked by stage 3, it runs no agent

    @property
    def order(self) -> int:
        """Its place in the boot: a stage registering again no later than the last one is a new boot."""
        return list(Stage).index(self)

    @property
    def number(self) -> int | None:
        """The number its name carries, which the node's log lines show ("stage 2 agent up"); None for a
        stage that runs no agent, so never reports to the master."""
        digits = self.value.removeprefix("stage")
        return int(digits) if digits.isdigit() else None

    @classmethod
    def with_agent(cls) -> tuple[Stage, ...]:
        """The stages that run the agent: the ones a node can be in, and report to the master."""
        return tuple(stage for stage in cls if stage.number is not None)
