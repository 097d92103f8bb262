# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of kong_run_lock.

The module runs where the lock lives (the task is delegated to the host that reaches the
database, or holds the DB-less lock file). With ``record_path``, the run's record (its phase and
facts, run id, token, control node and process) is also written here, on the control node, in the
same task: a second copy a run after a crash finds even when the database's copy is gone (a
restore cut short, a lock cleared by hand). It is written after the module succeeded, never in
check mode, and marked ``ended`` when the lock is released.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile

from ansible.plugins.action import ActionBase

MODULE = "kongops.upgrade.kong_run_lock"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(path, data):
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".kongops-record-", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def record(args, result, previous):
    """The record to keep on the control node after the module's result, or None for none."""
    state = args.get("state", "status")
    token = args.get("token")
    if state == "released":
        if not previous or previous.get("token") != token:
            return None
        return dict(previous, ended=True, updated=_now())
    if state != "acquired":
        return None
    mine = previous if previous and previous.get("token") == token else {}
    facts = args.get("facts")
    data = dict(mine)
    if facts is not None:
        data.update(facts)
    holder = result.get("holder") or {}
    for key in ("run_id", "controller", "pid", "phase"):
        data[key] = args[key] if args.get(key) is not None else mine.get(key)
    data.update({"token": token, "started": holder.get("started_at") or mine.get("started"), "updated": _now(),
                 "ended": False})
    return data


class ActionModule(ActionBase):
    """Run kong_run_lock where the task is delegated; keep the run's record on the control node."""

    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # not used: the module needs no files from here
        args = dict(self._task.args)
        result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
        path = args.get("record_path")
        if not path or result.get("failed") or self._task.check_mode:
            return result
        path = os.path.expanduser(str(path))
        data = record(args, result, _read(path))
        if data is not None:
            try:
                _write(path, data)
            except OSError as exc:
                result["failed"] = True
                result["msg"] = "the run lock is held, but the run's record on the control node %s cannot be written: %s" % (path, exc)
        return result
