"""Unit tests for _background: a module's work forked off, its outcome collected once by a later run."""

import os
import time

import pytest

from ansible_collections.kongops.upgrade.plugins.module_utils._background import (
    BackgroundError,
    BackgroundFailure,
    collect,
    start,
)


class Exited(Exception):
    pass


class Module:
    def exit_json(self, **result):
        raise Exited(result)

    def fail_json(self, **result):
        raise AssertionError(f"fail_json: {result}")


def launch(job_dir, work):
    with pytest.raises(Exited) as exited:
        start(Module(), str(job_dir), work)
    result = exited.value.args[0]
    assert result["changed"] is False and result["job_dir"] == str(job_dir)
    return result["job_id"]


def test_the_outcome_of_the_work_is_collected_once(tmp_path):
    jobs = tmp_path / "jobs"
    job_id = launch(jobs, lambda: {"changed": True, "pid": os.getpid()})
    assert (jobs / (job_id + ".pid")).exists(), "the pid file is there when the module returns"
    outcome = collect(str(jobs), job_id, timeout=30)
    assert outcome["failed"] is False and outcome["changed"] is True
    assert outcome["pid"] != os.getpid(), "the work ran in another process"
    assert list(jobs.iterdir()) == []
    with pytest.raises(BackgroundError, match="there is no job"):
        collect(str(jobs), job_id, timeout=1)


def test_a_failure_and_an_unexpected_error_are_outcomes_too(tmp_path):
    def refuse():
        raise BackgroundFailure("the configuration changed", {"unchanged": {"unchanged": False}})

    def crash():
        raise KeyError("boom")

    refused = collect(str(tmp_path), launch(tmp_path, refuse), timeout=30)
    assert refused == {"failed": True, "msg": "the configuration changed", "unchanged": {"unchanged": False}}
    crashed = collect(str(tmp_path), launch(tmp_path, crash), timeout=30)
    assert crashed["failed"] and "KeyError" in crashed["msg"] and "boom" in crashed["msg"]


def test_a_slow_job_times_out_and_can_be_collected_again(tmp_path):
    job_id = launch(tmp_path, lambda: time.sleep(1.5) or {"changed": False})
    with pytest.raises(BackgroundError, match="still at work after 0.2 s"):
        collect(str(tmp_path), job_id, timeout=0.2)
    assert collect(str(tmp_path), job_id, timeout=30)["failed"] is False


def test_a_job_id_is_never_a_path(tmp_path):
    for bad in ("../../etc/passwd", "", "a" * 31, "A" * 32):
        with pytest.raises(BackgroundError, match="is not a job id"):
            collect(str(tmp_path), bad, timeout=1)


def test_the_job_directory_is_private(tmp_path):
    jobs = tmp_path / "shared"
    jobs.mkdir(mode=0o777)
    jobs.chmod(0o777)
    collect_id = launch(jobs, lambda: {})
    assert jobs.stat().st_mode & 0o777 == 0o700
    outcome_file = jobs / (collect_id + ".json")
    deadline = time.monotonic() + 30
    while not outcome_file.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert outcome_file.stat().st_mode & 0o777 == 0o600
    collect(str(jobs), collect_id, timeout=30)
