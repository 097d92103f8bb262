"""labctl: the lab that runs the Kong emulator on real PostgreSQL, HAProxy and NGINX.

Everything binds to loopback only. Runtime state lives under ``tests/lab/run/``
(git-ignored). See ``README.md`` in this package for the layout and conventions.
"""

__all__ = ["LabError"]


class LabError(Exception):
    """A lab operation failed; the message says what failed and what to do."""
