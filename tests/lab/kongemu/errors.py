"""Errors the emulated `kong` CLI turns into Kong's output and exit codes."""

from __future__ import annotations


class KongError(Exception):
    """An uncaught Lua error in Kong: `Error: <message>` on stderr, exit 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(Exception):
    """A lapp usage error: the message (and usage) on stderr, exit 1."""

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class Exit(Exception):
    """A deliberate `os.exit(code)` from a command (e.g. `migrations list` 3/4/5)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
