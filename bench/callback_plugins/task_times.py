# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark helper, not part of the collection: the wall-clock time of every task of a run, summed
by task name, written as JSON to the file named by KONGOPS_BENCH_TASK_TIMES when the run ends.
Enabled by the benchmarks with ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins and
ANSIBLE_CALLBACKS_ENABLED=task_times."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: task_times
type: aggregate
short_description: The time of every task, summed by name, as JSON (benchmarks only)
description:
  - Writes the seconds, runs and name of every task (keyed by file and line), as JSON, to the file named by the environment variable KONGOPS_BENCH_TASK_TIMES.
requirements:
  - enabled with ANSIBLE_CALLBACKS_ENABLED=task_times
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._current: tuple[str, float] | None = None
        self._times: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        self._names: dict[str, str] = {}

    def _close(self) -> None:
        if self._current:
            name, began = self._current
            self._times[name][0] += time.monotonic() - began
            self._times[name][1] += 1
            self._current = None

    def v2_playbook_on_task_start(self, task, is_conditional):  # noqa: ANN001, ARG002 (Ansible's signature)
        self._close()
        # Keyed by where the task is written (file:line), which stays the same whatever the names
        # templated into it (a batch's nodes, a step's percentage).
        path = task.get_path() or task.get_name()
        where = path.split("/roles/", 1)[-1]
        self._names.setdefault(where, task.get_name().split(" : ", 1)[-1])
        self._current = (where, time.monotonic())

    def v2_playbook_on_stats(self, stats):  # noqa: ANN001, ARG002 (Ansible's signature)
        self._close()
        path = os.environ.get("KONGOPS_BENCH_TASK_TIMES")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump({where: {"seconds": round(s, 3), "runs": n, "name": self._names[where]}
                           for where, (s, n) in self._times.items()}, handle)
