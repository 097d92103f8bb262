# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A module's work in a detached process of its own, collected by a later module run.

Private to the collection. Ansible's ``async`` would do the same, but Ansible does not pipeline
async tasks: the module, its arguments included (a database password), is a file on the host
while the job runs. Here the module, which got its arguments over the connection, forks: the
work goes on in a detached grandchild that holds them in memory only, and the module returns at
once with a job id. The work's outcome (what the module would have returned; no secret, as the
arguments given with ``no_log`` never are) is written to ``<job_dir>/<job_id>.json``, mode 0600 in
a directory of mode 0700; the collecting run waits for it, reads it and removes it.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid

from ansible_collections.kongops.upgrade.plugins.module_utils._proc import pid_running

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class BackgroundFailure(Exception):
    """The work failed: ``msg`` and the partial result the module would have failed with."""

    def __init__(self, msg, result=None):
        super(BackgroundFailure, self).__init__(msg)
        self.msg = msg
        self.result = dict(result or {})


class BackgroundError(Exception):
    """The job cannot be started or collected; the message says why."""


def _private_dir(job_dir):
    job_dir = os.path.abspath(os.path.expanduser(job_dir))
    try:
        os.makedirs(job_dir, mode=0o700, exist_ok=True)
        info = os.lstat(job_dir)
    except OSError as exc:
        raise BackgroundError("cannot create the job directory %s: %s" % (job_dir, exc)) from exc
    if info.st_uid != os.geteuid() or not os.path.isdir(job_dir) or os.path.islink(job_dir):
        raise BackgroundError("the job directory %s is not a directory of this user (uid %d)"
                              % (job_dir, os.geteuid()))
    if info.st_mode & 0o077:
        os.chmod(job_dir, 0o700)
    return job_dir


def _paths(job_dir, job_id):
    if not _JOB_ID.match(job_id or ""):
        raise BackgroundError("job_id %r is not a job id this module returned" % (job_id,))
    base = os.path.join(job_dir, job_id)
    return base + ".json", base + ".pid"


def _write_private(path, text):
    temporary = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def start(module, job_dir, work):
    """Run ``work()`` (a dict, or BackgroundFailure) in a detached process; exit the module with its job id.

    Never returns in the module's own process. The job's process id is in ``<job_id>.pid`` before
    the module returns, so a collector can tell a job still at work from one that died."""
    job_dir = _private_dir(job_dir)
    job_id = uuid.uuid4().hex
    result_path, pid_path = _paths(job_dir, job_id)
    first = os.fork()
    if first:
        os.waitpid(first, 0)  # the first child only forks the worker, records its pid, and exits
        if not os.path.exists(pid_path):
            module.fail_json(msg="the background job did not start (no %s)" % pid_path)
        module.exit_json(changed=False, job_id=job_id, job_dir=job_dir)
    try:
        os.setsid()  # out of the session of the connection that ran the module
        worker = os.fork()
        if worker:
            _write_private(pid_path, "%d\n" % worker)
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the connection waits for its pipes to close: the worker keeps none
            os.dup2(devnull, fd)
        if devnull > 2:
            os.close(devnull)
        try:
            outcome = dict(work() or {})
            outcome["failed"] = False
        except BackgroundFailure as exc:
            outcome = dict(exc.result, failed=True, msg=exc.msg)
        except Exception as exc:  # pylint: disable=broad-except  # anything else is reported, not lost
            outcome = {"failed": True, "msg": "the background job failed: %s: %s" % (type(exc).__name__, exc)}
        _write_private(result_path, json.dumps(outcome, sort_keys=True, default=str))
    finally:
        os._exit(0)


def collect(job_dir, job_id, timeout, poll_interval=0.1):
    """The outcome of a job (``failed`` tells how it ended), once it is there; its files are removed.

    Raises BackgroundError when there is no such job, when its process died without an outcome, or
    when it is still at work after ``timeout`` seconds (it then goes on, and can be collected again)."""
    job_dir = os.path.abspath(os.path.expanduser(job_dir))
    result_path, pid_path = _paths(job_dir, job_id)
    deadline = time.time() + timeout
    while True:
        try:
            with open(result_path) as handle:
                outcome = json.load(handle)
        except FileNotFoundError:
            outcome = None
        except ValueError as exc:
            raise BackgroundError("the outcome of job %s in %s cannot be read: %s" % (job_id, result_path, exc)) from exc
        if outcome is not None:
            for path in (result_path, pid_path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            return outcome
        try:
            with open(pid_path) as handle:
                pid = int(handle.read().strip() or 0)
        except FileNotFoundError:
            raise BackgroundError("there is no job %s in %s (collected already, or started on another host "
                                  "or by another user)" % (job_id, job_dir)) from None
        except ValueError:
            pid = 0
        if not pid or not pid_running(pid):
            if os.path.exists(result_path):
                continue
            try:
                os.unlink(pid_path)
            except FileNotFoundError:
                pass
            raise BackgroundError("job %s (pid %s) ended without an outcome: it was killed, or its host restarted"
                                  % (job_id, pid or "unknown"))
        if time.time() >= deadline:
            raise BackgroundError("job %s (pid %d) is still at work after %s s; collect it again, or see what it "
                                  "waits for" % (job_id, pid, timeout))
        time.sleep(poll_interval)
