"""Unit tests for the kong_migrations state machine, with a scripted fake CLI."""

import pytest

from ansible_collections.kongops.upgrade.plugins.module_utils._kong_cli import CommandResult
from ansible_collections.kongops.upgrade.plugins.module_utils._migrations import (
    MigrationsError,
    MigrationsRunner,
)

UP_TO_DATE = (0, "Executed migrations:\ncore: 000_base, 001_x\n")
NEW = (5, "Executed migrations:\ncore: 000_base\n\nNew migrations available:\ncore: 001_x\n\n"
          "Run 'kong migrations up' to proceed\n")
PENDING = (4, "Executed migrations:\ncore: 000_base\n\nPending migrations:\ncore: 001_x\n\n"
              "Run 'kong migrations finish' when ready\n")
PENDING_AND_NEW = (4, "Executed migrations:\ncore: 000_base\n\nPending migrations:\ncore: 001_x\n\n"
                      "New migrations available:\nacl: 009_y\n\nRun 'kong migrations finish' when ready\n")
BOOTSTRAP = (3, "Database needs bootstrapping or is older than Kong 1.0.\n")


class FakeCli:
    """Answers `migrations list` from a queue of states and records other commands."""

    conf = "/etc/kong/kong.conf"
    lock_timeout = 60

    def __init__(self, states, outputs=None):
        self.states = list(states)
        self.outputs = outputs or {}
        self.ran = []

    def check_inputs(self):
        return None

    def run(self, args, **_kwargs):
        if args[:2] == ["migrations", "list"]:
            rc, out = self.states[0] if len(self.states) == 1 else self.states.pop(0)
            return CommandResult(["kong"] + args, rc, out, "")
        if args[:2] == ["migrations", "status"]:
            return CommandResult(["kong"] + args, 1, "", "No such command for migrations: status")
        self.ran.append(" ".join(args))
        scripted = self.outputs.get(args[1], (0, "", ""))
        if isinstance(scripted, list):
            scripted = scripted.pop(0) if len(scripted) > 1 else scripted[0]
        rc, out, err = scripted
        return CommandResult(["kong"] + args, rc, out, err)


def test_up_runs_only_when_new_migrations_exist():
    cli = FakeCli([NEW, PENDING])
    result = MigrationsRunner(cli, "up").ensure()
    assert cli.ran == ["migrations up"]
    assert result["changed"] and result["state_after"]["state"] == "pending"


def test_up_again_changes_nothing():
    cli = FakeCli([PENDING])
    result = MigrationsRunner(cli, "up").ensure()
    assert cli.ran == [] and not result["changed"]


def test_up_refuses_pending_from_an_earlier_upgrade_and_names_the_next_step():
    cli = FakeCli([PENDING_AND_NEW])
    with pytest.raises(MigrationsError, match="state=finished"):
        MigrationsRunner(cli, "up").ensure()
    assert cli.ran == []


def test_finished_runs_finish_then_up_then_reads_state():
    cli = FakeCli([PENDING_AND_NEW, NEW, UP_TO_DATE])
    result = MigrationsRunner(cli, "finished").ensure()
    assert cli.ran == ["migrations finish", "migrations up"]
    assert result["state_after"]["state"] == "up_to_date"


def test_needs_bootstrap_is_refused_for_an_upgrade():
    cli = FakeCli([BOOTSTRAP])
    with pytest.raises(MigrationsError, match="needs bootstrapping"):
        MigrationsRunner(cli, "up").ensure()
    assert cli.ran == []


def test_bootstrapped_bootstraps_an_empty_database_once():
    cli = FakeCli([BOOTSTRAP, UP_TO_DATE])
    assert MigrationsRunner(cli, "bootstrapped").ensure()["changed"]
    assert cli.ran == ["migrations bootstrap"]


def test_check_mode_predicts_without_running():
    cli = FakeCli([PENDING_AND_NEW])
    result = MigrationsRunner(cli, "finished").ensure(check_mode=True)
    assert cli.ran == []
    assert result["changed"]
    assert result["planned"] == ["migrations finish", "migrations up", "migrations finish (if up leaves migrations pending)"]


def test_aborted_waits_for_the_other_node_then_sees_its_work():
    aborted = (0, "aborted: another node is performing database changes\n", "")
    cli = FakeCli([PENDING, PENDING, UP_TO_DATE], outputs={"finish": aborted})
    clock = iter(range(0, 1000, 2))
    runner = MigrationsRunner(cli, "finished", clock=lambda: next(clock), sleep=lambda _s: None)
    result = runner.ensure()
    assert cli.ran == ["migrations finish", "migrations finish"]
    assert not result["changed"]
    assert result["state_after"]["state"] == "up_to_date"


def test_aborted_retries_once_the_lock_is_released():
    aborted = (0, "aborted: another node is performing database changes\n", "")
    cli = FakeCli([PENDING, PENDING, PENDING, UP_TO_DATE], outputs={"finish": [aborted, aborted, (0, "ok", "")]})
    clock = iter(range(0, 1000, 2))
    runner = MigrationsRunner(cli, "finished", clock=lambda: next(clock), sleep=lambda _s: None)
    result = runner.ensure()
    assert cli.ran == ["migrations finish"] * 3
    assert result["changed"] and result["waited_for_lock_seconds"] > 0


def test_aborted_past_the_deadline_fails_clearly():
    aborted = (0, "aborted: another node is performing database changes\n", "")
    cli = FakeCli([PENDING], outputs={"finish": aborted})
    clock = iter(range(0, 10000, 30))
    runner = MigrationsRunner(cli, "finished", lock_wait_timeout=60, clock=lambda: next(clock),
                              sleep=lambda _s: None)
    with pytest.raises(MigrationsError, match=r"after \d+ s of waiting \(lock_wait_timeout=60\)"):
        runner.ensure()


def test_failed_command_reports_kongs_error_line():
    err = "Error: Database has pending migrations; run 'kong migrations finish'\n\n  Run with --v (verbose)\n"
    cli = FakeCli([NEW], outputs={"up": (1, "", err)})
    with pytest.raises(MigrationsError, match="pending migrations; run 'kong migrations finish'"):
        MigrationsRunner(cli, "up").ensure()


def test_a_live_lock_is_waited_on_before_anything_runs():
    """`up` would block inside Kong for its whole --lock-timeout: the runner waits itself."""
    holder = {"owner": "node-b", "ttl": "2026-01-01 00:01:00+00", "expired": False}
    locks = [holder, holder, holder, None]  # read for the result first, then before each attempt
    cli = FakeCli([NEW, NEW, NEW, PENDING])
    clock = iter(range(0, 1000, 1))
    runner = MigrationsRunner(cli, "up", clock=lambda: next(clock), sleep=lambda _s: None,
                              lock_reader=lambda: locks.pop(0) if len(locks) > 1 else locks[0])
    result = runner.ensure()
    assert cli.ran == ["migrations up"]
    assert result["changed"] and result["waited_for_lock_seconds"] > 0
    assert result["lock"] == holder


def test_a_live_lock_past_the_deadline_names_owner_and_expiry():
    holder = {"owner": "node-b", "ttl": "2026-01-01 00:01:00+00", "expired": False}
    cli = FakeCli([NEW])
    clock = iter(range(0, 1000, 2))
    runner = MigrationsRunner(cli, "up", lock_wait_timeout=5, clock=lambda: next(clock), sleep=lambda _s: None,
                              lock_reader=lambda: holder)
    with pytest.raises(MigrationsError, match="another node holds the migrations lock.*owner node-b until "
                                              "2026-01-01 00:01:00"):
        runner.ensure()
    assert cli.ran == []


def test_an_expired_lock_does_not_hold_anything_up():
    expired = {"owner": "dead-node", "ttl": "2020-01-01 00:00:00+00", "expired": True}
    cli = FakeCli([NEW, PENDING])
    result = MigrationsRunner(cli, "up", lock_reader=lambda: expired).ensure()
    assert cli.ran == ["migrations up"] and result["waited_for_lock_seconds"] == 0


def test_check_mode_marks_the_finish_after_up_as_conditional():
    cli = FakeCli([NEW])
    result = MigrationsRunner(cli, "finished").ensure(check_mode=True)
    assert result["planned"] == ["migrations up", "migrations finish (if up leaves migrations pending)"]
