"""Things a user should know about a checkpoint, as values.

Each problem has a stable ``code`` (for JSON consumers and tests), a ``severity``
(``info``, ``warning``, ``error``) and a one-sentence message that says what it means.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    code: str
    severity: str
    message: str


def problem(code: str, severity: str, message: str) -> Problem:
    if severity not in ("info", "warning", "error"):
        raise ValueError(severity)
    return Problem(code, severity, message)
