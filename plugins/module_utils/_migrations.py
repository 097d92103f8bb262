# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drive `kong migrations` to a desired state, idempotently (kong-facts 2, 3, 10).

Private to the collection. The state is always read first with
`kong migrations list` (exit codes 0/3/4/5) and, where the version has it,
`kong migrations status` (JSON, 3.0+), and only what is missing is run.
"""

from __future__ import annotations

import time

from ansible_collections.kongops.upgrade.plugins.module_utils._kong_cli import KongCliError
from ansible_collections.kongops.upgrade.plugins.module_utils._migrations_output import (
    ABORTED_LINE,
    MigrationsOutputError,
    count,
    parse_list,
    parse_status,
)

STATES = ("bootstrapped", "up", "finished", "status")
MAX_STEPS = 8
CONDITIONAL_FINISH = " (if up leaves migrations pending)"


class MigrationsError(Exception):
    """A migration state we must not go on from, with what to do next."""


def summarize(state):
    """A short, stable text of a migration state, for diffs and messages."""
    if state["needs_bootstrap"]:
        return "needs bootstrap\n"
    lines = ["state: %s" % state["state"]]
    for section in ("executed", "pending", "new", "missing"):
        lines.append("%s: %d" % (section, count(state[section])))
        for subsystem, names in sorted(state[section].items()):
            if section != "executed":
                lines.append("  %s: %s" % (subsystem, ", ".join(names)))
    return "\n".join(lines) + "\n"


def _names(section):
    return ", ".join("%s %s" % (sub, ",".join(names)) for sub, names in sorted(section.items()))


class MigrationsRunner:
    """Reads the migration state and runs the commands that reach ``desired``."""

    def __init__(self, cli, desired, force=False, allow_bootstrap=False, lock_wait_timeout=120,
                 poll_interval=2.0, use_status=True, clock=time.monotonic, sleep=time.sleep, lock_reader=None):
        if desired not in STATES:
            raise MigrationsError("state must be one of %s, got '%s'" % (", ".join(STATES), desired))
        self.cli = cli
        self.desired = desired
        self.force = force
        self.allow_bootstrap = allow_bootstrap
        self.lock_wait_timeout = lock_wait_timeout
        self.poll_interval = poll_interval
        self.use_status = use_status
        self.clock = clock
        self.sleep = sleep
        self.lock_reader = lock_reader
        self.commands = []
        self.waited_for_lock = 0.0

    # -- reading -------------------------------------------------------------
    def read_state(self):
        result = self.cli.run(["migrations", "list"], db_options=True)
        try:
            state = parse_list(result.rc, result.stdout)
        except MigrationsOutputError as exc:
            raise MigrationsError(
                "`%s` could not read the migration state (rc=%s): %s. Check that the database "
                "is reachable with the node's pg_* settings and credentials"
                % (" ".join(result.argv), result.rc, result.error_line or exc)) from exc
        if self.use_status and not state["needs_bootstrap"]:
            status = self.cli.run(["migrations", "status"], db_options=True)
            if status.rc == 0:
                try:
                    state["missing"] = parse_status(status.stdout)["missing"]
                except MigrationsOutputError:
                    pass
            else:
                # 2.8 has no `status` (kong-facts 2.5): `list` alone is the truth there.
                self.use_status = False
        return state

    # -- planning ------------------------------------------------------------
    def next_step(self, state):
        """The next `kong migrations` subcommand to run, or None when ``desired`` holds."""
        if self.desired == "status":
            return None
        if state["needs_bootstrap"]:
            if self.desired == "bootstrapped" or self.allow_bootstrap:
                return ["migrations", "bootstrap"]
            raise MigrationsError(
                "The database has no Kong schema (it needs bootstrapping), but state=%s expects an "
                "existing Kong database. Check pg_host/pg_port/pg_database in %s: an upgrade must point "
                "at the cluster's database. To create a new schema on purpose, use state=bootstrapped "
                "or allow_bootstrap=true" % (self.desired, self.cli.conf or "the node's kong.conf"))
        if self.desired == "bootstrapped":
            return None
        if self.desired == "up":
            if not state["new"]:
                return None
            if state["pending"] and not self.force:
                raise MigrationsError(
                    "Database has pending migrations from an earlier upgrade (%s), and `kong migrations up` "
                    "refuses to run until they are finished. Finish that upgrade first: run state=finished "
                    "once no node of the version before it uses this database" % _names(state["pending"]))
            return ["migrations", "up"] + (["-f"] if self.force else [])
        # finished: nothing pending, nothing new
        if state["pending"]:
            return ["migrations", "finish"] + (["-f"] if self.force else [])
        if state["new"]:
            return ["migrations", "up"] + (["-f"] if self.force else [])
        return None

    def plan(self, state):
        """Predict the commands for check mode, from the state alone.

        Which new migrations have a teardown is not in `list`/`status` output, so after a
        predicted `up` with state=finished the last `finish` is marked conditional
        (CONDITIONAL_FINISH): it runs only when that `up` leaves migrations pending, as
        every Kong release with a contract phase does.
        """
        steps = []
        if self.desired == "status":
            return steps
        simulated = {key: (dict(value) if isinstance(value, dict) else value) for key, value in state.items()}
        for _unused in range(MAX_STEPS):
            step = self.next_step(simulated)
            if step is None:
                break
            steps.append(" ".join(step))
            sub = step[1]
            if sub == "bootstrap":
                simulated.update(needs_bootstrap=False, new={}, pending={})
            elif sub == "up":
                simulated["new"] = {}
                if self.desired == "finished":
                    steps.append(" ".join(["migrations", "finish"] + (["-f"] if self.force else []))
                                 + CONDITIONAL_FINISH)
                    break
            elif sub == "finish":
                simulated["pending"] = {}
        return steps

    # -- doing ---------------------------------------------------------------
    def _run_step(self, step):
        result = self.cli.run(step, db_options=True)
        self.commands.append(result.as_dict())
        if result.rc != 0:
            raise MigrationsError(self._failure_message(step, result))
        return ABORTED_LINE not in result.stdout

    def _failure_message(self, step, result):
        error = result.error_line or "(no error output)"
        hint = "See stdout/stderr in the returned commands."
        if "pending migrations" in error:
            hint = "Finish the earlier upgrade first with state=finished."
        elif "timeout" in error:
            hint = ("The migration lock was held for longer than lock_timeout=%s s. %s."
                    % (self.cli.lock_timeout, self._lock_message()))
        elif "needs bootstrapping" in error or "Database needs bootstrap" in error:
            hint = "The database has no Kong schema: check the node's pg_* settings."
        return "`kong %s` failed (rc=%s): %s. %s" % (" ".join(step), result.rc, error, hint)

    def _lock_message(self):
        holder = self.lock_reader() if self.lock_reader else None
        if holder:
            return ("The migrations lock is held by owner %s until %s (%s). A crashed node's lock expires by itself at "
                    "that time; a live one belongs to a node running migrations now: let it finish"
                    % (holder.get("owner"), holder.get("ttl"), "expired" if holder.get("expired") else "live"))
        return ("Another node is running migrations, or a crashed node left the lock row, which Kong removes once it "
                "expires after lock_timeout (%s s)" % self.cli.lock_timeout)

    def ensure(self, check_mode=False):
        """Reach the desired state; return a result dict for exit_json."""
        try:
            self.cli.check_inputs()
        except KongCliError as exc:
            raise MigrationsError(str(exc)) from exc
        before = self.read_state()
        predicted = self.plan(before)
        result = {"state_before": before, "planned": predicted,
                  "lock": self.lock_reader() if self.lock_reader else None}
        if check_mode:
            result.update(changed=bool(predicted), state_after=before, commands=[])
            result["diff"] = {"before": summarize(before), "after": _predicted_summary(before, predicted)}
            return result
        state = before
        changed = False
        ran = 0
        wait_started = None
        while True:
            step = self.next_step(state)
            if step is None:
                break
            if ran >= MAX_STEPS:
                raise MigrationsError("gave up after %d migration commands without reaching state=%s; last state: %s"
                                      % (MAX_STEPS, self.desired, summarize(state).strip()))
            began = self.clock()
            holder = self._live_lock()
            if holder is None and self._run_step(step):
                ran += 1
                changed = True
                if wait_started is not None:
                    self.waited_for_lock += began - wait_started
                    wait_started = None
                state = self.read_state()
                continue
            # Another node holds the migrations lock: seen in the locks table before running
            # anything (so `up`, which would block for its whole --lock-timeout, is not started),
            # or Kong printed `aborted: another node is performing database changes` (exit 0,
            # nothing ran). Wait, re-read and try again: the other node may have done the work.
            if wait_started is None:
                wait_started = began
            now = self.clock()
            if now - wait_started >= self.lock_wait_timeout:
                self.waited_for_lock += now - wait_started
                seen = ("Kong printed '%s'" % ABORTED_LINE) if holder is None else \
                    "another node holds the migrations lock"
                raise MigrationsError("`kong %s` did not run: %s, and it was still so after %d s of waiting "
                                      "(lock_wait_timeout=%s). %s"
                                      % (" ".join(step), seen, int(now - wait_started), self.lock_wait_timeout,
                                         self._lock_message()))
            self.sleep(self.poll_interval)
            state = self.read_state()
        if wait_started is not None:
            self.waited_for_lock += self.clock() - wait_started
        result.update(changed=changed, state_after=state, commands=self.commands,
                      waited_for_lock_seconds=round(self.waited_for_lock, 1))
        result["diff"] = {"before": summarize(before), "after": summarize(state)}
        return result

    def _live_lock(self):
        """The `migrations` lock row when another node holds it now (not expired), else None."""
        holder = self.lock_reader() if self.lock_reader else None
        if not holder or holder.get("expired"):
            return None
        return holder


def _predicted_summary(before, planned):
    if not planned:
        return summarize(before)
    return summarize(before) + "would run: %s\n" % "; ".join("kong " + step for step in planned)
