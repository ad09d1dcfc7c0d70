"""One way out for the agent's log lines: the console always, and the master as soon as there is a link.

Stage 2 attaches the link the moment it knows the master ("network logging to the master at once"); lines
said before are kept and sent with the first batch, so the master sees the whole boot.
"""

from __future__ import annotations

from agent.system import console

EARLY_LINES_KEPT = 200


class Reporter:
    def __init__(self) -> None:
        self.link = None  # agent.masterlink.MasterLink, once the master is known
        self._early: list[str] = []

    def say(self, message: str, level: str = "info") -> None:
        console.say(message)
        if self.link is not None:
            self.link.queue_log(level, message)
        elif len(self._early) < EARLY_LINES_KEPT:
            self._early.append(message)

    def attach(self, link) -> None:
        self.link = link
        for message in self._early:
            link.queue_log("info", message)
        self._early.clear()


reporter = Reporter()
say = reporter.say
