"""Secrets never reach Ansible's output, even at -vvv where Ansible prints every module's arguments.

Every integration test already checks its runs for the lab's passwords (conftest); this one passes
the database password and an Admin API token through every option that can carry them, at -vvv,
and in failing runs (whose messages quote what went wrong).
"""

from __future__ import annotations

import pytest
from ansible_runner import RUN_LOG, run_tasks
from itlab import lab_session

TOKEN = "it-admin-token-5b0c1d"


@pytest.fixture(scope="module")
def lab():
    with lab_session("--x-nodes", "1", "--y-nodes", "0") as lab:
        yield lab


def assert_not_shown(secrets, since):
    runs = RUN_LOG[since:]
    assert runs
    for record in runs:
        assert "invocation" in record.stdout or "module_args" in record.stdout, "-vvv shows the arguments"
        for secret in secrets:
            assert secret not in record.stdout and secret not in record.stderr and secret not in record.result_text, \
                f"a secret appears in the output of {record.name}"


def test_no_secret_in_verbose_output_of_any_module(lab, tmp_path):
    since = len(RUN_LOG)
    x1 = lab.host("x1")
    node = {"kong_executable": x1["kong_executable"], "conf": x1["kong_conf_path"]}
    pg = lab.pg_args()
    results = run_tasks([
        ("kong_migrations", {**node, "pg_password": lab.password}, True),
        ("kong_migrations", {**node, "environment": {"pg_password": lab.password, "pg_database": "kong"}}, False),
        ("kong_migrations", {**node, "environment": {"KONG_PG_PASSWORD": lab.password, "pg_database": "missing_db"},
                             "state": "up"}, False),
        ("pg_backup", {**pg, "backup_dir": str(tmp_path / "b"), "label": "s"}, False),
        ("pg_backup", {**pg, "pg_database": "missing_db", "backup_dir": str(tmp_path / "b"), "label": "t"}, False),
        ("kong_config_freeze", {**pg, "state": "status"}, False),
        ("kong_config_freeze", {**pg, "pg_user": "nobody", "state": "status"}, False),
        ("kong_node_info", {"admin_url": x1["kong_admin_url"], "admin_token": TOKEN}, False),
        ("kong_node_info", {"admin_url": "http://127.0.0.1:9", "admin_token": TOKEN}, False),
    ], verbosity=3)
    assert_not_shown([lab.password, TOKEN], since)
    outcomes = [bool(result.get("failed")) for result in results]
    assert outcomes == [False, False, True, False, True, False, True, False, True], \
        "the runs pointed at a missing database, a wrong user or a closed port are meant to fail"
