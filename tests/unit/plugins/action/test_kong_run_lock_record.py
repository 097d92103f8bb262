"""kong_run_lock's action plugin: the run's record kept on the control node."""

import json

from ansible_collections.kongops.upgrade.plugins.action import kong_run_lock as action


def test_a_heartbeat_keeps_the_facts_and_phase_and_a_release_ends_the_record():
    first = action.record({"state": "acquired", "token": "t1", "run_id": "r", "controller": "ops1", "pid": 7,
                           "phase": "backup", "facts": {"x_stopped": False}},
                          {"holder": {"started_at": "2026-12-06T01:00:00Z"}}, None)
    assert first["phase"] == "backup" and first["x_stopped"] is False and first["ended"] is False
    assert first["started"] == "2026-12-06T01:00:00Z" and first["controller"] == "ops1" and first["pid"] == 7
    beat = action.record({"state": "acquired", "token": "t1", "phase": "stop_x", "facts": {"x_stopped": True}},
                         {"holder": {}}, first)
    assert beat["phase"] == "stop_x" and beat["x_stopped"] is True
    assert beat["controller"] == "ops1" and beat["started"] == first["started"], "kept from the last record"
    ended = action.record({"state": "released", "token": "t1"}, {}, beat)
    assert ended["ended"] is True and ended["phase"] == "stop_x"


def test_another_runs_record_is_neither_continued_nor_ended():
    theirs = {"token": "t1", "phase": "stop_x", "x_stopped": True, "ended": False}
    assert action.record({"state": "released", "token": "t2"}, {}, theirs) is None
    mine = action.record({"state": "acquired", "token": "t2", "run_id": "r", "phase": "preflight", "facts": {}},
                         {"holder": {}}, theirs)
    assert mine["token"] == "t2" and "x_stopped" not in mine, "a new run starts its own record"
    assert action.record({"state": "status"}, {}, theirs) is None


def test_the_record_is_written_private_and_whole(tmp_path):
    path = tmp_path / "reports" / "r.state.json"
    action._write(str(path), {"phase": "backup"})
    assert json.loads(path.read_text()) == {"phase": "backup"}
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert [p.name for p in path.parent.iterdir()] == ["r.state.json"], "no temporary file left"
