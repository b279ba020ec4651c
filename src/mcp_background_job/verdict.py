"""The command policy's answer (``Verdict``): allowed or refused, the rule and the part that
decided. Shared by ``policy`` and ``shellinput``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Decision = Literal["allowed", "refused"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's answer: ``rule`` names what decided, ``matched`` the part of the command."""

    decision: Decision
    rule: str
    matched: str
    message: str
    audit_note: str | None = None  # allowed, but something could not be verified

    @property
    def allowed(self) -> bool:
        return self.decision == "allowed"
