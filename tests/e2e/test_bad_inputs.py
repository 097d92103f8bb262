"""Bad inputs on real Kong, table-driven: each is refused with a message that names the problem and
the fix, and changes nothing (database rows, schema_meta, databases, freeze, load balancer weights,
node processes and versions, backups and reports).

One lab (3.9.0 -> 3.9.1, a patch upgrade every strategy allows, 2 X + 2 Y, HAProxy) serves every
case: a refusal that changed anything would show up in the snapshot taken after it.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml
from e2e_helpers import fast_gate, lab_snapshot, run_playbook, sql
from labfixtures import running_lab

X, Y = "3.9.0", "3.9.1"
LAB = ("--x-version", X, "--y-version", Y, "--x-nodes", "2", "--y-nodes", "2")
DONE = "Nothing has changed"
STEPS = "must be a list of percentages of traffic on Y"


def _inventory(lab, tmp_path, label, edit):
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    edit(inventory["all"]["children"])
    path = tmp_path / f"inventory-{label}.yml"
    path.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    path.chmod(0o600)
    return path


def _set(host, **values):
    def edit(groups):
        for group in groups.values():
            if host in (group.get("hosts") or {}):
                group["hosts"][host].update(values)
                for name, value in values.items():
                    if value is None:
                        del group["hosts"][host][name]
    return edit


def _copy(host, source, variable):
    def edit(groups):
        hosts = {name: values for group in groups.values() for name, values in (group.get("hosts") or {}).items()}
        hosts[host][variable] = hosts[source][variable]
    return edit


def _also_in(group, host):
    def edit(groups):
        groups[group]["hosts"][host] = {}
    return edit


DUAL, BG, IN_PLACE = "upgrade_dual_cluster", "upgrade_blue_green", "upgrade_in_place"
NOT_A_FILE = "/nonexistent/kongops/install-kong.yml"

# (id, playbook, extra variables, inventory edit or None, words the message must hold)
CASES = [
    ("x-group-missing", DUAL, {"kong_upgrade_x_group": "kong_old"}, None,
     ["The X nodes' group 'kong_old'", "the inventory has", "Set kong_upgrade_x_group", DONE]),
    ("x-group-empty", BG, {"kong_upgrade_x_group": ""}, None, ["The X nodes' group ''", DONE]),
    ("y-group-missing", IN_PLACE, {"kong_upgrade_y_group": "kong_new"}, None,
     ["the Y nodes' group 'kong_new'", "kong_x, kong_y", DONE]),
    ("y-group-missing-plan", "plan", {"kong_upgrade_y_group": "kong_new"}, None, ["the Y nodes' group 'kong_new'"]),
    ("x-equals-y", DUAL, {"kong_upgrade_y_version": X}, None,
     [f"X and Y are both {X}: there is nothing to upgrade", DONE]),
    ("x-equals-y-plan", "plan", {"kong_upgrade_x_version": Y}, None, [f"X and Y are both {Y}"]),
    ("y-version-not-a-version", BG, {"kong_upgrade_y_version": "latest"}, None,
     ["(latest) must be Kong versions such as 3.4.2", DONE]),
    ("steps-decreasing", DUAL, {"kong_upgrade_traffic_steps": [50, 10]}, None, ["is [50, 10]", STEPS, DONE]),
    ("steps-zero", BG, {"kong_upgrade_traffic_steps": [0]}, None, ["is [0]", STEPS]),
    ("steps-over-100", DUAL, {"kong_upgrade_traffic_steps": [150]}, None, ["is [150]", STEPS]),
    ("steps-empty", BG, {"kong_upgrade_traffic_steps": []}, None, ["is []", STEPS]),
    ("steps-negative", DUAL, {"kong_upgrade_traffic_steps": [-10, 100]}, None, ["is [-10, 100]", STEPS]),
    ("steps-repeated", DUAL, {"kong_upgrade_traffic_steps": [10, 10, 100]}, None, ["is [10, 10, 100]", STEPS]),
    ("steps-not-ending-at-100", BG, {"kong_upgrade_traffic_steps": [10, 50]}, None, ["the last one 100"]),
    ("steps-a-string", DUAL, {"kong_upgrade_traffic_steps": "10,50,100"}, None, ['is "10,50,100"', STEPS]),
    # The role's argument spec refuses it first (elements: float), naming the option.
    ("steps-not-numbers", DUAL, {"kong_upgrade_traffic_steps": ["ten", 100]}, None,
     ["option 'kong_upgrade_traffic_steps'", "unable to convert to float"]),
    ("steps-plan", "plan", {"kong_upgrade_strategy": "dual_cluster", "kong_upgrade_traffic_steps": [50, 10]}, None,
     [STEPS]),
    ("prometheus-without-url", DUAL, {"kong_upgrade_gate_source": "prometheus"}, None,
     ["the prometheus source needs kong_upgrade_gate_prometheus_url", DONE]),
    ("latency-quantile-over-1", BG, {"kong_upgrade_gate_latency_quantile": 99}, None,
     ["kong_upgrade_gate_latency_quantile is 99", "at most 1", DONE]),
    ("min-duration-negative", DUAL, {"kong_upgrade_gate_min_duration": -1}, None,
     ['kong_upgrade_gate_min_duration is -1', "0 or more (seconds)", DONE]),
    ("max-below-min", BG, {"kong_upgrade_gate_min_duration": 30, "kong_upgrade_gate_max_duration": 10}, None,
     ["kong_upgrade_gate_max_duration (10 s) is shorter than kong_upgrade_gate_min_duration (30 s)", DONE]),
    ("max-duration-zero", DUAL, {"kong_upgrade_gate_min_duration": 0, "kong_upgrade_gate_max_duration": 0}, None,
     ["kong_upgrade_gate_max_duration is 0", "above 0"]),
    ("drain-negative", DUAL, {"kong_upgrade_drain_timeout": -5}, None, ["kong_upgrade_drain_timeout is -5"]),
    # The role's argument spec refuses it first (type: int), naming the option.
    ("drain-not-a-number", IN_PLACE, {"kong_upgrade_drain_timeout": "two minutes"}, None,
     ["argument 'kong_upgrade_drain_timeout' is of type str", "unable to convert to int"]),
    ("quit-timeout-negative", IN_PLACE, {"kong_upgrade_quit_timeout": -1}, None, ["kong_upgrade_quit_timeout is -1"]),
    ("ready-timeout-zero", BG, {"kong_upgrade_ready_timeout": 0}, None, ["kong_upgrade_ready_timeout is 0", "above 0"]),
    ("min-requests-negative", DUAL, {"kong_upgrade_gate_min_requests": -100}, None,
     ["kong_upgrade_gate_min_requests is -100"]),
    ("error-rate-over-1", BG, {"kong_upgrade_gate_max_error_rate": 5}, None,
     ["kong_upgrade_gate_max_error_rate is 5", "at most 1"]),
    ("error-rate-increase-negative", DUAL, {"kong_upgrade_gate_max_error_rate_increase": -0.1}, None,
     ["kong_upgrade_gate_max_error_rate_increase is -0.1"]),
    ("y-shares-x-prefix", BG, {}, _copy("y1", "x1", "kong_prefix"),
     ["x1 and y1 share kong_prefix", "Each node needs its own kong_prefix", DONE]),
    ("y-shares-x-prefix-in-place", IN_PLACE, {}, _copy("y2", "x2", "kong_prefix"), ["x2 and y2 share kong_prefix"]),
    ("y-shares-x-conf", DUAL, {}, _copy("y2", "x1", "kong_conf_path"), ["x1 and y2 share kong_conf_path"]),
    ("y-shares-x-admin-url", DUAL, {}, _copy("y1", "x2", "kong_admin_url"), ["x2 and y1 share kong_admin_url"]),
    ("x-nodes-share-admin-url", IN_PLACE, {}, _copy("x2", "x1", "kong_admin_url"), ["x1 and x2 share kong_admin_url"]),
    ("y-shares-x-lb-server", BG, {}, _copy("y1", "x1", "kong_lb_server_name"),
     ["x1 and y1 share kong_lb_server_name"]),
    ("y-shares-x-prefix-plan", "plan", {}, _copy("y1", "x1", "kong_prefix"), ["x1 and y1 share kong_prefix"]),
    ("y-database-is-x-database", DUAL, {"kong_upgrade_y_pg_database": "{{ kong_pg_database }}"}, None,
     ["the database X serves from", "Give Y another database", DONE]),
    ("target-past-known-releases", DUAL, {"kong_upgrade_y_version": "3.99.0"}, None,
     ["3.99.0 is later than the newest Kong release line these rules know (3.14)", "Check the version for a typo"]),
    ("relative-backup-dir", BG, {"kong_upgrade_backup_dir": "backups"}, None, ["must be absolute paths", DONE]),
    ("relative-report-dir", IN_PLACE, {"kong_upgrade_report_dir": "reports"}, None, ["must be absolute paths"]),
    ("strategy-mismatch", BG, {"kong_upgrade_strategy": "dual_cluster"}, None,
     ["kong_upgrade_strategy=dual_cluster was given to the blue_green role", DONE]),
    ("node-without-prefix", DUAL, {}, _set("y2", kong_prefix=None), ["Host y2 lacks one of"]),
    ("node-without-lb-server", BG, {}, _set("x2", kong_lb_server_name=None), ["Host x2 lacks one of"]),
    ("lb-server-unknown", DUAL, {}, _set("y2", kong_lb_server_name="y9"), ["no server named y9 in the load balancer"]),
    ("x-nodes-run-another-version", DUAL, {"kong_upgrade_x_version": "3.8.1"}, None,
     ["Expected every node of 'kong_x' to run Kong 3.8.1", "found 0 of 2", f"x1 runs {X}; x2 runs {X}"]),
    ("an-x-node-does-not-answer", BG, {}, _set("x2", kong_admin_url="http://127.0.0.1:9"),
     ["found 1 of 2", "x1 runs", "x2 "]),
    ("y-binary-missing", DUAL, {}, _set("y1", kong_executable="/opt/kong-3.9.1/bin/kong"),
     ["Y's kong executable /opt/kong-3.9.1/bin/kong on y1 cannot be run", "it is missing, not executable",
      "Install Kong 3.9.1 there"]),
    ("y-binary-is-x", IN_PLACE, {}, _copy("y2", "x1", "kong_executable"),
     [f"on y2 says '{X}', expected {Y}", "Install Kong"]),
    ("database-down", DUAL, {"kong_pg_port": 1}, None,
     ["cannot connect to PostgreSQL at", ":1", "Set kong_pg_host, kong_pg_port", DONE]),
    ("database-missing", BG, {"kong_pg_database": "kong_typo"}, None, ["database kong_typo does not exist on", "Set kong_pg_host", DONE]),
    ("database-wrong-password", IN_PLACE, {"kong_pg_password": "not-the-password"}, None,
     ["PostgreSQL refused user kong", "check pg_user and pg_password", DONE]),
    ("rolling-batch-size-zero-percent", "upgrade_rolling", {"kong_upgrade_rolling_batch_size": "0%"}, None,
     ['kong_upgrade_rolling_batch_size is "0%"', 'a percentage of the nodes above 0 and at most 100 such as "25%"', DONE]),
    ("declared-dbless-on-traditional-nodes", "upgrade_rolling", {"kong_upgrade_mode": "dbless"}, None,
     ["kong_upgrade_mode is dbless, but x1 runs traditional, x2 runs traditional", DONE]),
    ("declared-data-plane-on-traditional-nodes", "plan", {"kong_upgrade_mode": "control_plane"}, None,
     ["kong_upgrade_mode is control_plane, but x1 runs traditional"]),
    ("downgrade", DUAL, {"kong_upgrade_x_version": Y, "kong_upgrade_y_version": X}, None,
     [f"{Y} -> {X} is a downgrade"]),
    ("run-lock-ttl-zero", DUAL, {"kong_upgrade_run_lock_ttl": 0}, None,
     ["kong_upgrade_run_lock_ttl is 0: it must be a whole number above 0",
      "seconds after the run's last heartbeat", DONE]),
    ("soak-negative", BG, {"kong_upgrade_blue_green_soak_seconds": -60}, None,
     ["kong_upgrade_blue_green_soak_seconds is -60", "0 or more (seconds Y serves all traffic", DONE]),
    ("max-weight-zero", DUAL, {"kong_upgrade_max_weight": 0}, None,
     ["kong_upgrade_max_weight is 0: it must be a whole number above 0 and at most 256", "haproxy driver", DONE]),
    ("max-weight-over-haproxy", BG, {"kong_upgrade_max_weight": 300}, None,
     ["kong_upgrade_max_weight is 300", "at most 256"]),
    ("backup-jobs-zero", IN_PLACE, {"kong_upgrade_backup_jobs": 0}, None,
     ["kong_upgrade_backup_jobs is 0: it must be a whole number above 0 (parallel pg_dump and pg_restore jobs)", DONE]),
    ("node-timeout-below-quit-timeout", IN_PLACE, {"kong_upgrade_quit_timeout": 120, "kong_upgrade_node_timeout": 60},
     None, ["kong_upgrade_node_timeout (60 s) is not longer than kong_upgrade_quit_timeout (120 s)",
            "Raise kong_upgrade_node_timeout", DONE]),
    ("lb-group-missing", BG, {"kong_upgrade_lb_group": "lb_typo"}, None,
     ["The blue_green strategy moves traffic through a load balancer in group 'lb_typo' (kong_upgrade_lb_group)",
      "the inventory has kong_lb, kong_x, kong_y", "Set kong_upgrade_lb_group", DONE]),
    ("x-version-empty", DUAL, {"kong_upgrade_x_version": ""}, None,
     [f"X (empty) and Y ({Y}) must be Kong versions such as 3.4.2 (kong_upgrade_x_version is empty)", DONE]),
    ("y-group-is-x-group", DUAL, {"kong_upgrade_y_group": "kong_x"}, None,
     ["x1, x2 are in both the X nodes' group 'kong_x' and the Y nodes' group 'kong_x' (the same group)",
      "a node cannot run X and Y at once", "Set kong_upgrade_y_group", DONE]),
    ("a-host-in-both-groups", BG, {}, _also_in("kong_y", "x2"),
     ["x2 is in both the X nodes' group 'kong_x' and the Y nodes' group 'kong_y'", "a node cannot run X and Y at once",
      "Take x2 out of one of the groups", DONE]),
    # The strategy roles' argument spec refuses it first (elements: dict), naming the option.
    ("smoke-requests-not-a-list", DUAL, {"kong_upgrade_smoke_requests": "GET /"}, None,
     ["option 'kong_upgrade_smoke_requests'", "unable to convert to dict"]),
    # The plan playbook has no argument spec: preflight's own check says it.
    ("smoke-requests-not-a-list-plan", "plan", {"kong_upgrade_smoke_requests": "GET /"}, None,
     ['kong_upgrade_smoke_requests is "GET /": it must be a list of requests', "each a mapping with a path", DONE]),
    # Written at the very end, after the upgrade: refused before it instead.
    ("report-dir-is-a-file", IN_PLACE, {"kong_upgrade_report_dir": "/dev/null"}, None,
     ["kong_upgrade_report_dir /dev/null cannot hold the reports: /dev/null exists and is not a directory",
      "choose a directory", DONE]),
    # Found today only at the install step, after the freeze and the backup.
    ("install-tasks-file-missing", DUAL, {"kong_upgrade_install_method": "tasks",
                                          "kong_upgrade_install_tasks_file": NOT_A_FILE}, None,
     [f"kong_upgrade_install_method is tasks, but kong_upgrade_install_tasks_file is {NOT_A_FILE}, which is not a file",
      "before finding no way to install Y", DONE]),
]


@pytest.fixture(scope="module")
def lab():
    with running_lab(*LAB, kong="real") as lab:
        yield lab


@pytest.fixture(scope="module")
def before(lab):
    return lab_snapshot(lab)


# Left out of `make test` (marker extended; `make test-all` runs them): more inputs of a check that a case
# above already takes through the same task, with the same message.
EXTENDED_CASES = {
    "x-group-empty", "x-equals-y-plan",
    "steps-zero", "steps-over-100", "steps-empty", "steps-negative", "steps-repeated", "steps-a-string",
    "min-duration-negative", "max-duration-zero", "min-requests-negative", "error-rate-over-1",
    "error-rate-increase-negative", "drain-negative", "quit-timeout-negative", "ready-timeout-zero",
    "y-shares-x-prefix-in-place", "y-shares-x-conf", "x-nodes-share-admin-url", "y-shares-x-lb-server",
    "y-shares-x-prefix-plan", "relative-report-dir", "node-without-lb-server", "database-missing", "max-weight-zero",
    "smoke-requests-not-a-list-plan", "database-wrong-password", "y-binary-is-x", "an-x-node-does-not-answer",
    "declared-data-plane-on-traditional-nodes", "soak-negative", "backup-jobs-zero", "x-version-empty",
}
assert EXTENDED_CASES <= {case[0] for case in CASES}


@pytest.mark.parametrize("case, playbook, extra, edit, words",
                         [pytest.param(*case, marks=pytest.mark.extended) if case[0] in EXTENDED_CASES else case
                          for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_input_is_refused_by_name_and_changes_nothing(lab, before, tmp_path, case, playbook, extra, edit, words):
    inventory = _inventory(lab, tmp_path, case, edit) if edit else lab.inventory_path
    # kong_upgrade_allow_unsupported_path would not help any case here; none may get past preflight.
    run = run_playbook(playbook, inventory, dict(fast_gate(lab.run_dir), **extra), tmp_path)
    assert run.rc != 0, f"{case}: {run.explain()}"
    assert run.changed == 0, f"{case}: {run.explain()}"
    said = " ".join((run.stdout + run.stderr).split())
    for text in words:
        assert text in said, f"{case}: {text!r} not said\n{run.explain()}"
    assert lab_snapshot(lab) == before, f"{case} changed something"


def test_database_settings_given_only_for_the_nodes_are_found(lab, before, tmp_path):
    """kong_pg_* in the node groups' vars, not visible to the play host: the run reads them as the backup
    host (the first X node) sees them, instead of falling back to 127.0.0.1:5432."""
    def move(groups):
        inventory_vars = source["all"]["vars"]
        settings = {name: inventory_vars.pop(name) for name in list(inventory_vars) if name.startswith("kong_pg_")}
        assert {"kong_pg_host", "kong_pg_port", "kong_pg_password"} <= set(settings)
        for group in ("kong_x", "kong_y"):
            groups[group].setdefault("vars", {}).update(settings)

    source = yaml.safe_load(lab.inventory_path.read_text())
    move(source["all"]["children"])
    path = tmp_path / "inventory-pg-on-the-nodes.yml"
    path.write_text(yaml.safe_dump(source), encoding="utf-8")
    path.chmod(0o600)
    plan = run_playbook("plan", path, fast_gate(lab.run_dir), tmp_path)
    assert plan.rc == 0 and plan.changed == 0, plan.explain()
    assert "cannot connect to PostgreSQL" not in plan.stdout, plan.explain()
    assert lab_snapshot(lab) == before


def test_a_teardown_owed_by_an_earlier_upgrade_is_refused_by_every_strategy_and_changes_nothing(lab, before, tmp_path):
    """schema_meta as an earlier `kong migrations up` leaves it when nobody ran `finish`: rate-limiting's
    006_350_to_360 (it has a teardown) recorded in ``pending`` and not in ``executed``, ``last_executed`` still
    the migration before it (the connector's record_migration). Real Kong 3.9.0 reads that row as pending
    (`kong migrations list` exits 4); a name in both ``executed`` and ``pending`` would read as executed.
    dual-cluster, blue-green and in-place refuse to start from there, naming the migration."""
    subsystem, owed = "rate-limiting", "006_350_to_360"
    where = f"key = 'schema_meta' AND subsystem = '{subsystem}'"
    row = sql(lab, f"SELECT executed, pending, last_executed FROM schema_meta WHERE {where}")  # noqa: S608 (fixed names)
    assert row and row[0][0][-1] == owed and not row[0][1], row
    executed, pending, last_executed = row[0]
    x1 = lab.host("x1")
    listing = [x1["kong_executable"], "migrations", "list", "-c", x1["kong_conf_path"]]
    assert subprocess.run(listing, capture_output=True, text=True, check=False).returncode == 0
    try:
        # A name in both lists reads as executed: no test of the refusal.
        sql(lab, f"UPDATE schema_meta SET pending = ARRAY['{owed}'] WHERE {where}")  # noqa: S608 (fixed names)
        assert subprocess.run(listing, capture_output=True, text=True, check=False).returncode == 0
    finally:
        sql(lab, f"UPDATE schema_meta SET pending = %s WHERE {where}", params=(pending,))  # noqa: S608 (fixed names)
    sql(lab, f"UPDATE schema_meta SET executed = array_remove(executed, '{owed}'), pending = ARRAY['{owed}'], "  # noqa: S608
             f"last_executed = '{executed[-2]}' WHERE {where}")
    try:
        listed = subprocess.run(listing, capture_output=True, text=True, check=False)
        assert listed.returncode == 4, listed.stdout + listed.stderr
        assert f"{subsystem}: {owed}" in listed.stdout.split("Pending migrations:")[1], listed.stdout
        owing = lab_snapshot(lab)
        for playbook in (DUAL, BG, IN_PLACE):
            run = run_playbook(playbook, lab.inventory_path, fast_gate(lab.run_dir), tmp_path)
            said = " ".join((run.stdout + run.stderr).split())
            assert run.rc != 0 and run.changed == 0, f"{playbook}: {run.explain()}"
            assert (f"The database has pending migrations from an earlier upgrade ({subsystem}: {owed}): "
                    "finish that upgrade first") in said, f"{playbook}: {run.explain()}"
            assert DONE in said, f"{playbook}: {run.explain()}"
            assert lab_snapshot(lab) == owing, f"{playbook} changed something"
    finally:
        sql(lab, f"UPDATE schema_meta SET executed = %s, pending = %s, last_executed = %s WHERE {where}",  # noqa: S608
            params=(executed, pending, last_executed))
    assert sql(lab, f"SELECT executed, pending, last_executed FROM schema_meta WHERE {where}") == row  # noqa: S608
    assert lab_snapshot(lab) == before
