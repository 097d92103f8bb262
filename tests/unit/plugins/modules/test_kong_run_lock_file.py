"""kong_run_lock's file backend (DB-less nodes): take, renew, refuse, expire, take over, release."""

import json

import pytest

from ansible_collections.kongops.upgrade.plugins.modules import kong_run_lock


class Refused(Exception):
    pass


class FakeModule:
    def __init__(self, **params):
        base = {"state": "acquired", "token": "t1", "run_id": "kong-3.9.0-to-3.9.1", "controller": "ops1",
                "pid": 100, "ttl": 3600, "take_over": None, "force": False, "path": None, "phase": None,
                "facts": None}
        base.update(params)
        self.params = base
        self.check_mode = False
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)

    def fail_json(self, msg, **kwargs):
        raise Refused(msg)


def run(path, **params):
    module = FakeModule(path=str(path), **params)
    return kong_run_lock.run_file(module), module


def test_a_second_run_is_refused_by_name_and_the_holder_renews_and_releases(tmp_path):
    lock = tmp_path / "backups" / "kongops-run-lock.json"
    first = run(lock)[0]
    assert first["acquired"] and first["changed"] and lock.is_file()
    assert oct(lock.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(Refused, match=r"run kong-3.9.0-to-3.9.1 from ops1 \(pid 100\), started .* This run changed"):
        run(lock, token="t2", pid=200)
    assert json.loads(lock.read_text())["token"] == "t1", "a refused run leaves the lock alone"
    again = run(lock)[0]
    assert again["acquired"] and not again["changed"], "a heartbeat of the holder"
    other = run(lock, state="released", token="t2")[0]
    assert not other["changed"] and lock.is_file(), "another run's lock is never released"
    done = run(lock, state="released")[0]
    assert done["changed"] and not lock.exists()


def test_expired_dead_or_forced_locks_are_taken_over_with_a_warning(tmp_path):
    lock = tmp_path / "lock.json"
    run(lock)
    data = json.loads(lock.read_text())
    data["heartbeat_at"] = "2020-01-01T00:00:00Z"
    lock.write_text(json.dumps(data))
    taken, module = run(lock, token="t2")
    assert taken["taken_over"]["run_id"] == "kong-3.9.0-to-3.9.1" and "older than its ttl" in module.warnings[0]
    taken, module = run(lock, token="t3", take_over="t2")
    assert taken["acquired"] and "its process is gone" in module.warnings[0]
    taken, module = run(lock, token="t4", force=True)
    assert taken["acquired"] and "force=true" in module.warnings[0]
    with pytest.raises(Refused):
        run(lock, token="t5", take_over="t3")


def test_check_mode_writes_nothing(tmp_path):
    lock = tmp_path / "d" / "lock.json"
    module = FakeModule(path=str(lock))
    module.check_mode = True
    result = kong_run_lock.run_file(module)
    assert result["acquired"] and result["changed"] and not lock.parent.exists()


def test_the_run_record_is_kept_by_heartbeats_and_given_to_the_run_that_takes_over(tmp_path):
    lock = tmp_path / "lock.json"
    run(lock, phase="backup", facts={"x_stopped": False})
    run(lock)  # a heartbeat without a record keeps the last one
    held = run(lock, state="status")[0]["holder"]
    assert held["phase"] == "backup" and held["facts"] == {"x_stopped": False}
    run(lock, phase="stop_x", facts={"x_stopped": True})
    taken, module = run(lock, token="t2", take_over="t1", phase="preflight")
    assert taken["taken_over"]["phase"] == "stop_x" and taken["taken_over"]["facts"] == {"x_stopped": True}
    mine = run(lock, token="t2", state="status")[0]["holder"]
    assert mine["phase"] == "preflight" and mine["facts"] is None, "the new holder does not inherit the dead record"
    with pytest.raises(Refused, match=r"in phase 'preflight'"):
        run(lock, token="t3")
