# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a process still runs, by its pid (and start time, against a reused pid). Private to the collection."""

from __future__ import annotations

import os


def start_time(pid):
    """(start time, zombie) of ``pid`` from /proc/<pid>/stat; (None, False) where /proc does not show it."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None, False
    return (fields[19] if len(fields) > 19 else None), fields[:1] in ([b"Z"], [b"X"])


def pid_running(pid, started=None):
    """Whether ``pid`` runs: it exists, is no zombie, and (when ``started`` is given and /proc shows it) is
    the process that started then, not another one that got its pid since."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    now_started, zombie = start_time(pid)
    if zombie:
        return False
    return started is None or now_started is None or now_started == started
