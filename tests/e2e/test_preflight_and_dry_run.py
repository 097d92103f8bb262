"""Preflight and dry runs end to end on real Kong: every refusal names the problem and the fix and
changes nothing; check mode (every strategy playbook) and playbooks/plan.yml report what a run
would do and change nothing either. A patch upgrade 3.9.0 -> 3.9.1 (every strategy allows it), and
3.4.2 -> 3.9.1 for the refusals of a path that skips minors."""

from __future__ import annotations

import shutil

import yaml
from ansible_runner import run_module
from e2e_helpers import admin_version, assert_serving, fast_gate, pg_args, run_playbook, sql
from labfixtures import running_lab

# A patch upgrade: every strategy for traditional nodes allows it.
X, Y = "3.9.0", "3.9.1"
LAB = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")


def _inventory_with(lab, tmp_path, host, **changes):
    """A copy of the lab's inventory with some of ``host``'s variables changed."""
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    for group in inventory["all"]["children"].values():
        if host in (group.get("hosts") or {}):
            group["hosts"][host].update(changes)
    path = tmp_path / f"inventory-{host}-{'-'.join(sorted(changes))}.yml"
    path.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    path.chmod(0o600)
    return path


def _old_pg_dump(tmp_path):
    """A pg_bin_dir whose pg_dump says it is PostgreSQL 13 (a test double), psql and pg_restore real."""
    bindir = tmp_path / "old-pg-client-test-double"
    bindir.mkdir()
    double = bindir / "pg_dump"
    double.write_text("#!/bin/sh\n# TEST DOUBLE: a pg_dump that reports PostgreSQL 13.\n"
                      "if [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 13.16 (test double)'; exit 0; fi\n"
                      "exit 1\n", encoding="utf-8")
    double.chmod(0o755)
    for tool in ("psql", "pg_restore"):
        (bindir / tool).symlink_to(shutil.which(tool))
    return str(bindir)


def _assert_nothing_changed(lab):
    assert not run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"]
    backups = lab.run_dir / "backups"
    assert not backups.exists() or not any(backups.iterdir()), sorted(backups.iterdir())
    reports = lab.run_dir / "reports"
    assert not reports.exists() or not any(reports.rglob("*.json")), sorted(reports.rglob("*"))
    assert_serving(lab, X, "kong_y")


def test_preflight_refuses_with_the_problem_and_the_fix_and_changes_nothing(tmp_path):
    with running_lab(*LAB, kong="real") as lab:
        extra = fast_gate(lab.run_dir)
        inv = lab.inventory_path
        refusals = [
            ("a relative backup directory", "upgrade_dual_cluster", inv, {"kong_upgrade_backup_dir": "backups"},
             ["must be absolute paths", "Nothing has changed"]),
            ("strategy mismatch", "upgrade_dual_cluster", inv, {"kong_upgrade_strategy": "in_place"},
             ["kong_upgrade_strategy=in_place was given to the dual_cluster role", "Run playbooks/upgrade_in_place.yml",
              "Nothing has changed"]),
            ("an X node that does not answer", "upgrade_dual_cluster",
             _inventory_with(lab, tmp_path, "x2", kong_admin_url="http://127.0.0.1:9"), {},
             [f"Expected every node of 'kong_x' to run Kong {X}", "found 1 of 2", "Fix the nodes"]),
            ("a server the load balancer does not have", "upgrade_blue_green",
             _inventory_with(lab, tmp_path, "y2", kong_lb_server_name="y9"), {},
             ["no server named y9 in the load balancer", "nothing was changed"]),
            # A real Kong build of another version where Y's binary should be: X's 3.9.0.
            ("a Y binary of another version", "upgrade_in_place",
             _inventory_with(lab, tmp_path, "y1", kong_executable=lab.host("x1")["kong_executable"]), {},
             [f"says '{X}'", f"expected {Y}", f"Install Kong {Y} there"]),
            ("a pg_dump older than the server", "upgrade_dual_cluster", inv,
             {"kong_upgrade_pg_bin_dir": _old_pg_dump(tmp_path)},
             ["pg_dump is version 13", "server is PostgreSQL 15", "postgresql-client-15"]),
            ("a backup directory that cannot be created", "upgrade_in_place", inv,
             {"kong_upgrade_backup_dir": "/etc/hostname/kong-backups"},
             ["cannot be created: /etc/hostname is a file", "choose another backup_dir"]),
        ]
        for what, playbook, inventory, more, expected in refusals:
            run = run_playbook(playbook, inventory, dict(extra, **more), tmp_path)
            assert run.rc != 0, f"{what}: {run.explain()}"
            assert run.changed == 0, f"{what}: {run.explain()}"
            for text in expected:
                assert text in run.stdout, f"{what}: {text!r} not said\n{run.explain()}"
        _assert_nothing_changed(lab)

        # Another node holds the migrations lock: refused with its owner and expiry.
        sql(lab, "INSERT INTO locks (key, owner, ttl) VALUES ('migrations', 'e2e-other-node', now() + interval '1 hour')")
        run = run_playbook("upgrade_dual_cluster", inv, extra, tmp_path)
        assert run.rc != 0 and run.changed == 0, run.explain()
        assert "is held by owner e2e-other-node" in run.stdout and "Nothing has changed" in run.stdout, run.explain()
        # The same row, expired (a node crashed while it held the lock): only noted, as Kong replaces it.
        sql(lab, "UPDATE locks SET ttl = now() - interval '1 minute' WHERE key = 'migrations'")
        plan = run_playbook("plan", inv, extra, tmp_path)
        assert plan.rc == 0 and plan.changed == 0, plan.explain()
        assert "The migrations lock row of owner e2e-other-node expired at" in plan.stdout, plan.explain()
        sql(lab, "DELETE FROM locks WHERE key = 'migrations'")
        _assert_nothing_changed(lab)


def test_a_path_that_skips_minors_is_refused_unless_allowed_and_blue_green_only_within_a_line(tmp_path):
    """Nodes that really run 3.4.2 and a Y of 3.9.1: Kong guarantees neither the path nor blue-green."""
    with running_lab("--x-version", "3.4.2", "--y-version", "3.9.1", "--x-nodes", "1", "--y-nodes", "1",
                     kong="real") as lab:
        extra = fast_gate(lab.run_dir)
        refusals = [
            ("path that skips a minor", "upgrade_dual_cluster", {},
             ["skips releases", "Upgrade through 3.5 -> 3.6 -> 3.7 -> 3.8 -> 3.9", "allow_unsupported_path"]),
            ("blue-green across release lines", "upgrade_blue_green", {"kong_upgrade_allow_unsupported_path": True},
             ["blue-green is documented only between patch versions", "Use dual_cluster (recommended) or in_place"]),
            ("the plan of a path that skips a minor", "plan", {}, ["skips releases"]),
        ]
        for what, playbook, more, expected in refusals:
            run = run_playbook(playbook, lab.inventory_path, dict(extra, **more), tmp_path)
            assert run.rc != 0 and run.changed == 0, f"{what}: {run.explain()}"
            for text in expected:
                assert text in run.stdout, f"{what}: {text!r} not said\n{run.explain()}"
        assert not run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"]
        assert_serving(lab, "3.4.2", "kong_y")


def test_dry_runs_and_the_plan_say_what_would_happen_and_change_nothing(tmp_path):
    with running_lab(*LAB, kong="real") as lab:
        extra = fast_gate(lab.run_dir)
        plan = run_playbook("plan", lab.inventory_path, extra, tmp_path)
        assert plan.rc == 0 and plan.changed == 0, plan.explain()
        assert "recommended_strategy" in plan.stdout and "patch upgrade" in plan.stdout, plan.explain()

        expected = {
            "upgrade_dual_cluster": "restore the backup into Y's database",
            "upgrade_in_place": "stop X (downtime starts)",
            "upgrade_blue_green": "migrations up only",
        }
        for playbook, then in expected.items():
            run = run_playbook(playbook, lab.inventory_path, extra, tmp_path, check=True)
            assert run.rc == 0, run.explain()
            assert f"{X} -> {Y}" in run.stdout and "would freeze X database kong" in run.stdout, run.explain()
            assert "would take a verified backup labelled" in run.stdout and then in run.stdout, run.explain()
        _assert_nothing_changed(lab)


def test_rolling_dry_run_on_db_less_nodes_changes_nothing(tmp_path):
    with running_lab("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2",
                     "--mode", "dbless", kong="real") as lab:
        extra = dict(fast_gate(lab.run_dir), kong_upgrade_mode="dbless")
        run = run_playbook("upgrade_rolling", lab.inventory_path, extra, tmp_path, check=True)
        assert run.rc == 0, run.explain()
        assert "nothing to freeze on DB-less nodes" in run.stdout and "validate it with kong config parse" in run.stdout
        assert "per batch (y1, y2)" in run.stdout, run.explain()
        for name, host in lab.hosts("kong_y").items():
            assert admin_version(host["kong_admin_url"]) is None, name
        assert not (lab.run_dir / "backups").exists() or not any((lab.run_dir / "backups").iterdir())
