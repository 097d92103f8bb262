"""Kong's CLI logger (`kong/cmd/utils/log.lua`, kong-facts 1).

* `log(...)` is the info level: stdout, no prefix.
* `log.warn` / `log.error` go to stderr as `YYYY/MM/DD HH:MM:SS [warn] msg`.
* With `--v` (verbose) or `--vv` (debug) every printed line gets the timestamp and
  level prefix, and verbose/debug lines are shown too.
* `-q` (`disable()`) silences every level, warn and error included.
* `print()` (used by `migrations status` and `version`) is never silenced.

Streams are looked up at write time, so tests capturing `sys.stdout` work.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

LEVELS = {"debug": 1, "verbose": 2, "info": 3, "warn": 4, "error": 5, "quiet": 6}
_NAMES = {number: name for name, number in LEVELS.items()}


class Log:
    """A callable logger with Kong's levels; `log("fmt %s", arg)` logs at info."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 level: str = "info") -> None:
        self._stdout = stdout
        self._stderr = stderr
        self.level = LEVELS[level]
        self._saved: int | None = None

    @property
    def stdout(self) -> TextIO:
        return self._stdout if self._stdout is not None else sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr if self._stderr is not None else sys.stderr

    def set_level(self, name: str) -> None:
        self.level = LEVELS[name]

    def disable(self) -> None:
        """`-q`: silence everything until `enable()`."""
        if self._saved is None:
            self._saved = self.level
            self.level = LEVELS["quiet"]

    def enable(self) -> None:
        if self._saved is not None:
            self.level = self._saved
            self._saved = None

    @property
    def verbose_mode(self) -> bool:
        return self.level < LEVELS["info"]

    def log(self, level: str, fmt: str, *args: object) -> None:
        number = LEVELS[level]
        if number < self.level:
            return
        msg = fmt % args if args else fmt
        if self.level < LEVELS["info"] or number >= LEVELS["warn"]:
            msg = f"{time.strftime('%Y/%m/%d %H:%M:%S')} [{_NAMES[number]}] {msg}"
        stream = self.stdout if number < LEVELS["warn"] else self.stderr
        stream.write(msg + "\n")
        stream.flush()

    def __call__(self, fmt: str, *args: object) -> None:
        self.log("info", fmt, *args)

    def debug(self, fmt: str, *args: object) -> None:
        self.log("debug", fmt, *args)

    def verbose(self, fmt: str, *args: object) -> None:
        self.log("verbose", fmt, *args)

    def info(self, fmt: str, *args: object) -> None:
        self.log("info", fmt, *args)

    def warn(self, fmt: str, *args: object) -> None:
        self.log("warn", fmt, *args)

    def error(self, fmt: str, *args: object) -> None:
        self.log("error", fmt, *args)

    def print(self, text: str) -> None:
        """Lua `print()`: stdout, unaffected by `-q` and levels."""
        self.stdout.write(text + "\n")
        self.stdout.flush()
