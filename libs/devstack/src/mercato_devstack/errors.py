"""Errors of the local stack."""

from __future__ import annotations

from pathlib import Path


class StackError(Exception):
    """The local stack could not do what was asked."""


class ComponentError(StackError):
    """One component failed; the message names it and the log to read."""

    def __init__(self, component: str, message: str, *, log_path: Path, log_tail: str = "") -> None:
        self.component = component
        self.log_path = log_path
        self.log_tail = log_tail
        text = f"{component}: {message}\n  log: {log_path}"
        if log_tail:
            indented = "\n".join(f"    {line}" for line in log_tail.splitlines())
            text += f"\n  last lines of the log:\n{indented}"
        super().__init__(text)
