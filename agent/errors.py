"""The agent's one error type with a hint: what went wrong and what to do about it, said on the console."""

from __future__ import annotations


class AgentError(Exception):
    """A failure the agent can explain: what went wrong and what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return text if not self.hint else f"{text} (hint: {self.hint})"
