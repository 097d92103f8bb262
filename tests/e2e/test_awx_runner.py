"""AWX's dual-cluster workflow (extensions/awx/setup_awx.yml) run the way AWX runs it, on real Kong.

AWX runs every job with ansible-runner in a fresh execution environment: a private data directory
(``project/``, ``inventory/hosts``, ``env/extravars``, ``env/envvars``), ``ansible-runner run <dir>
-p <playbook>``, and the job's artifacts are the ``artifact_data`` (set_stats) of its job events,
which AWX passes as extra vars to the later nodes of the workflow. There is no AWX server here and
awx.awx cannot be installed, so:

* ``setup_awx.yml`` runs against a stub of the three awx.awx modules it uses, whose argument specs
  are those of awx.awx's own modules; the stub records what it was given (the rendered workflow);
* each node of that workflow runs through the ansible-runner CLI (tests/integration/ansible_runner.py
  shadows the pip package's name on sys.path, hence the CLI), its extra vars put together as AWX
  does from what setup_awx.yml gave it: job template variables < survey defaults < node extra data
  < artifacts of the jobs before it < the workflow's survey answers; each job gets its own home
  directory, as each job gets a fresh execution environment (its report files die with it).

One lab (real Kong 3.9.0 -> 3.9.1, one X and one Y node, HAProxy) under 100 requests/s throughout:
the upgrade to the point of no return, then the approve path (the finalize run) given only the first
job's artifacts and the survey answers. (The deny path, return_traffic_to_x.yml, passed here once on
real Kong; it is left out of make test for time.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from ansible_runner import ansible_env, run_module  # tests/integration's helper, not the pip package
from e2e_helpers import (
    CONTROLLER_TOKEN,
    REPO,
    admin_version,
    assert_upgraded,
    fast_gate,
    lb_y_share,
    pg_args,
)
from labfixtures import running_lab

AWX = REPO / "extensions" / "awx"
RUNNER = Path(sys.executable).parent / "ansible-runner"
X, Y = "3.9.0", "3.9.1"

# What a later run needs to resume this upgrade (roles/kong_upgrade/tasks/report.yml, set_stats).
HANDOFF = ("kong_upgrade_run_id", "kong_upgrade_x_version", "kong_upgrade_y_version", "kong_upgrade_strategy",
           "kong_upgrade_y_pg_database")

# The lab's fixed settings for every job template (kongops_awx_job_variables): fast_gate's durations;
# two traffic steps instead of four keep each run short. Its paths and sample size are survey answers.
SURVEY_ANSWERS = ("kong_upgrade_backup_dir", "kong_upgrade_gate_min_requests")
LAB_JOB_VARIABLES = {**{k: v for k, v in fast_gate(Path("/")).items()
                        if k not in SURVEY_ANSWERS and k != "kong_upgrade_report_dir"},
                     "kong_upgrade_traffic_steps": [50, 100]}

# awx.awx's argument specs for the options setup_awx.yml may use (awx_collection/plugins/modules/
# credential_type.py, job_template.py, workflow_job_template.py): an option they lack fails the stub
# as it would fail awx.awx ("Unsupported parameters").
_AUTH = ("controller_host", "controller_username", "controller_password", "controller_oauthtoken",
         "controller_config_file", "validate_certs", "request_timeout")
_NODE = {
    "identifier": {"required": True}, "extra_data": {"type": "dict", "default": {}},
    "inventory": {"type": "raw"}, "scm_branch": {}, "job_type": {"choices": ["run", "check"]}, "job_tags": {},
    "skip_tags": {}, "limit": {}, "forks": {"type": "int"}, "job_slice_count": {"type": "int"},
    "timeout": {"type": "int"}, "execution_environment": {"type": "dict"}, "diff_mode": {"type": "bool"},
    "verbosity": {}, "all_parents_must_converge": {"type": "bool"},
    "state": {"choices": ["present", "absent"], "default": "present"},
    "unified_job_template": {"type": "dict", "options": {
        "organization": {"type": "dict", "options": {"name": {}}}, "inventory": {"type": "dict"}, "name": {},
        "description": {}, "type": {}, "timeout": {"type": "int", "default": 0}}},
    "related": {"type": "dict", "options": {
        key: {"type": "list", "elements": "dict"}
        for key in ("always_nodes", "success_nodes", "failure_nodes", "credentials", "labels", "instance_groups")}},
}
STUB_SPECS: dict[str, dict[str, Any]] = {
    "credential_type": {
        "name": {"required": True}, "new_name": {}, "description": {},
        "kind": {"choices": ["ssh", "vault", "net", "scm", "cloud", "insights"]},
        "inputs": {"type": "dict"}, "injectors": {"type": "dict"}, "state": {"choices": ["present", "absent"]}},
    "job_template": {
        **{key: {} for key in ("name", "new_name", "copy_from", "description", "organization", "inventory", "project",
                               "playbook", "credential", "vault_credential", "execution_environment", "limit",
                               "job_tags", "skip_tags", "start_at_task", "host_config_key", "scm_branch",
                               "webhook_credential", "custom_virtualenv", "webhook_service")},
        "job_type": {"choices": ["run", "check"]}, "credentials": {"type": "list", "elements": "str"},
        "instance_groups": {"type": "list", "elements": "str"}, "labels": {"type": "list", "elements": "str"},
        "forks": {"type": "int"}, "verbosity": {"type": "int"}, "timeout": {"type": "int"},
        "job_slice_count": {"type": "int"}, "extra_vars": {"type": "dict"}, "survey_spec": {"type": "dict"},
        **{key: {"type": "bool"} for key in (
            "survey_enabled", "become_enabled", "diff_mode", "allow_simultaneous", "force_handlers", "use_fact_cache",
            "prevent_instance_group_fallback", "ask_scm_branch_on_launch", "ask_diff_mode_on_launch",
            "ask_variables_on_launch", "ask_limit_on_launch", "ask_tags_on_launch", "ask_skip_tags_on_launch",
            "ask_job_type_on_launch", "ask_verbosity_on_launch", "ask_inventory_on_launch",
            "ask_credential_on_launch", "ask_execution_environment_on_launch", "ask_forks_on_launch",
            "ask_instance_groups_on_launch", "ask_job_slice_count_on_launch", "ask_labels_on_launch",
            "ask_timeout_on_launch")},
        "state": {"choices": ["present", "absent"]}},
    "workflow_job_template": {
        **{key: {} for key in ("name", "new_name", "copy_from", "description", "organization", "inventory", "limit",
                               "scm_branch", "job_tags", "skip_tags", "webhook_credential", "webhook_service")},
        "extra_vars": {"type": "dict"}, "survey_spec": {"type": "dict"}, "labels": {"type": "list", "elements": "str"},
        **{key: {"type": "bool"} for key in (
            "survey_enabled", "allow_simultaneous", "ask_variables_on_launch", "ask_inventory_on_launch",
            "ask_scm_branch_on_launch", "ask_limit_on_launch", "ask_labels_on_launch", "ask_tags_on_launch",
            "ask_skip_tags_on_launch", "destroy_current_nodes")},
        **{f"notification_templates_{kind}": {"type": "list", "elements": "str"}
           for kind in ("started", "success", "error", "approvals")},
        "workflow_nodes": {"type": "list", "elements": "dict", "options": _NODE},
        "state": {"choices": ["present", "absent"]}},
}

STUB_MODULE = '''\
#!/usr/bin/python
"""Stub of awx.awx.{name} for tests/e2e/test_awx_runner.py: checks its arguments, records them."""
import json
import os

from ansible.module_utils.basic import AnsibleModule

SPEC = {spec}

module = AnsibleModule(argument_spec=SPEC)
params = {{k: v for k, v in module.params.items() if v is not None}}
with open(os.environ["KONGOPS_AWX_STUB_LOG"], "a") as log:
    log.write(json.dumps({{"module": "{name}", "params": params}}) + "\\n")
module.exit_json(changed=True)
'''


def _stub_collection(root: Path) -> Path:
    modules = root / "ansible_collections" / "awx" / "awx" / "plugins" / "modules"
    modules.mkdir(parents=True)
    (modules.parent.parent / "galaxy.yml").write_text("namespace: awx\nname: awx\nversion: 0.0.0-stub\n")
    for name, spec in STUB_SPECS.items():
        full = {**spec, **{key: {"no_log": key in ("controller_password", "controller_oauthtoken")} for key in _AUTH}}
        (modules / f"{name}.py").write_text(STUB_MODULE.format(name=name, spec=repr(full)))
    return root


@pytest.fixture(scope="module")
def awx_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """``ansible-playbook extensions/awx/setup_awx.yml`` against the awx.awx stub: the arguments each
    module got, by module name."""
    tmp = tmp_path_factory.mktemp("awx-setup")
    log = tmp / "calls.jsonl"
    env = ansible_env({"KONGOPS_AWX_STUB_LOG": str(log), "CONTROLLER_HOST": "https://awx.invalid"})
    env["ANSIBLE_COLLECTIONS_PATH"] = f"{_stub_collection(tmp / 'stub')}:{env['ANSIBLE_COLLECTIONS_PATH']}"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), str(AWX / "setup_awx.yml"),
         "-e", json.dumps({"kongops_awx_job_variables": LAB_JOB_VARIABLES})],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    calls: dict[str, list[dict[str, Any]]] = {}
    for line in log.read_text().splitlines():
        call = json.loads(line)
        calls.setdefault(call["module"], []).append(call["params"])
    return calls


def _workflow(awx_setup: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    (workflow,) = awx_setup["workflow_job_template"]
    return {node["identifier"]: node for node in workflow["workflow_nodes"]}


def _edges(node: dict[str, Any], kind: str) -> list[str]:
    return [edge["identifier"] for edge in (node.get("related") or {}).get(kind) or []]


def _role_set_names() -> set[str]:
    """Every variable the roles set themselves (set_fact keys, register names): an extra var of
    the same name would shadow it."""
    names: set[str] = set()

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            if "register" in item:
                names.add(item["register"])
            for key in ("ansible.builtin.set_fact", "set_fact"):
                if isinstance(item.get(key), dict):
                    names.update(item[key])
            for value in item.values():
                walk(value)
        elif isinstance(item, list):
            for value in item:
                walk(value)

    for path in (REPO / "roles").glob("*/tasks/*.yml"):
        walk(yaml.safe_load(path.read_text()))
    return names


def test_setup_awx_defines_the_workflow_with_its_approval_and_hand_off(awx_setup):
    # The file itself, as YAML: the workflow task and its approval node.
    (play,) = yaml.safe_load((AWX / "setup_awx.yml").read_text())
    (task,) = [t for t in play["tasks"] if "awx.awx.workflow_job_template" in t]
    raw = {n["identifier"]: n for n in task["awx.awx.workflow_job_template"]["workflow_nodes"]}
    assert raw["approve"]["unified_job_template"]["type"] == "workflow_approval"

    # What awx.awx gets: the credential types exactly as in their files, AWX's templates unrendered.
    types = {t["name"]: t for t in awx_setup["credential_type"]}
    for path in sorted((AWX / "credential_types").glob("*.yml")):
        spec = yaml.safe_load(path.read_text())
        assert {k: types[spec["name"]][k] for k in ("kind", "inputs", "injectors")} == \
               {k: spec[k] for k in ("kind", "inputs", "injectors")}, path.name
    assert types["Kong PostgreSQL (kongops.upgrade)"]["injectors"]["env"]["PGPASSWORD"] == "{{ pg_password }}"

    survey = json.loads((AWX / "surveys" / "upgrade.json").read_text())
    templates = {t["name"]: t for t in awx_setup["job_template"]}
    for strategy, label in (("dual_cluster", "dual-cluster"), ("in_place", "in-place"), ("blue_green", "blue-green"),
                            ("rolling", "rolling")):
        template = templates[f"Kong upgrade: {label}"]
        assert template["playbook"] == "extensions/awx/playbooks/upgrade.yml"
        assert template["extra_vars"]["kong_upgrade_strategy"] == strategy
        assert template["survey_enabled"] is True and template["survey_spec"] == survey
        assert template["allow_simultaneous"] is False
    assert templates["Kong upgrade: rolling"]["extra_vars"]["kong_upgrade_mode"] == "dbless"
    assert (REPO / templates["Kong upgrade: return traffic to X"]["playbook"]).is_file()

    # The workflow: job 1 -> approval -> job 2 (the same job template), deny or timeout -> back to X.
    nodes = _workflow(awx_setup)
    assert set(nodes) == {"upgrade_to_ponr", "approve", "finalize", "return_to_x"}
    roots = set(nodes) - {child for node in nodes.values() for kind in ("success_nodes", "failure_nodes",
                                                                        "always_nodes") for child in _edges(node, kind)}
    assert roots == {"upgrade_to_ponr"}
    assert _edges(nodes["upgrade_to_ponr"], "success_nodes") == ["approve"]
    approve = nodes["approve"]
    assert approve["unified_job_template"]["type"] == "workflow_approval"
    assert approve["unified_job_template"]["timeout"] > 0  # a timeout fails the node: the deny path
    assert _edges(approve, "success_nodes") == ["finalize"] and _edges(approve, "failure_nodes") == ["return_to_x"]
    assert nodes["upgrade_to_ponr"]["unified_job_template"]["name"] == nodes["finalize"]["unified_job_template"][
        "name"] == "Kong upgrade: dual-cluster"
    assert nodes["upgrade_to_ponr"]["extra_data"] == {"kong_upgrade_finalize": "false"}
    assert nodes["finalize"]["extra_data"] == {"kong_upgrade_finalize": "true"}
    assert nodes["return_to_x"]["unified_job_template"]["name"] == "Kong upgrade: return traffic to X"
    # A node's extra data is accepted only for a survey question of its job template (or with
    # ask_variables_on_launch); the workflow's own survey must not hold kong_upgrade_finalize (its
    # answers override every node's values).
    assert "kong_upgrade_finalize" in {q["variable"] for q in survey["spec"]}
    (workflow,) = awx_setup["workflow_job_template"]
    asked = {q["variable"] for q in workflow["survey_spec"]["spec"]}
    assert asked == {q["variable"] for q in survey["spec"]} - {"kong_upgrade_finalize"}
    # The hand-off keys are none of the variables a workflow answer would override, and the roles
    # set none of them themselves (kong_upgrade_strategy: preflight sets the value it already has).
    assert not asked & set(HANDOFF)
    assert _role_set_names() & set(HANDOFF) == {"kong_upgrade_strategy"}


# ----------------------------------------------------------------------------- the jobs, as AWX runs them


class Job:
    """One AWX job run by ansible-runner in its own private data directory."""

    def __init__(self, pdd: Path, ident: str, proc: subprocess.CompletedProcess[str], extra_vars: dict[str, Any]):
        self.pdd, self.extra_vars = pdd, extra_vars
        artifacts = pdd / "artifacts" / ident
        self.rc = int((artifacts / "rc").read_text().strip()) if (artifacts / "rc").is_file() else proc.returncode
        self.stdout = (artifacts / "stdout").read_text() if (artifacts / "stdout").is_file() else proc.stdout
        self.stderr = proc.stderr
        # What AWX stores as the job's artifacts (awx/main/tasks/callback.py): the artifact_data of
        # its events, which ansible-runner's awx_display callback puts in playbook_on_stats.
        self.artifacts: dict[str, Any] = {}
        for path in sorted((artifacts / "job_events").glob("*.json")):
            event = json.loads(path.read_text())
            self.artifacts.update(event.get("event_data", {}).get("artifact_data") or {})

    def report(self) -> dict[str, Any]:
        """The JSON report this job wrote in its own (discarded in AWX) home directory."""
        path = self.pdd / "home" / "kong-upgrade-reports" / f"kong-{X}-to-{Y}.json"
        return json.loads(path.read_text())

    def explain(self) -> str:
        return f"rc={self.rc}\n{self.stdout[-6000:]}\n{self.stderr[-2000:]}"


def _credential_injection(lab: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The extra vars and environment AWX injects from the job templates' credentials: a "Kong
    PostgreSQL (kongops.upgrade)" credential with the lab's database, and a "Kong Admin API token"."""
    inputs = {k: str(v) for k, v in pg_args(lab).items()}
    extra_vars: dict[str, Any] = {}
    env: dict[str, str] = {}
    for name, values in (("kong_postgresql", inputs), ("kong_admin_token", {"admin_token": CONTROLLER_TOKEN})):
        injectors = yaml.safe_load((AWX / "credential_types" / f"{name}.yml").read_text())["injectors"]
        render = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string  # noqa: S701
        extra_vars.update({k: render(v).render(values) for k, v in injectors.get("extra_vars", {}).items()})
        env.update({k: render(v).render(values) for k, v in injectors.get("env", {}).items()})
    env["KONG_PG_RO_PASSWORD"] = CONTROLLER_TOKEN  # a secret of the controller's environment (as e2e_helpers)
    return extra_vars, env


def run_node(lab: Any, root: Path, awx_setup: dict[str, list[dict[str, Any]]], identifier: str,
             artifacts: dict[str, Any], answers: dict[str, Any], ident: str) -> Job:
    """Run workflow node ``identifier`` as AWX would: its job template's playbook through
    ``ansible-runner run``, with the extra vars AWX gives it."""
    node = _workflow(awx_setup)[identifier]
    template = {t["name"]: t for t in awx_setup["job_template"]}[node["unified_job_template"]["name"]]
    credential_vars, credential_env = _credential_injection(lab)
    extra_vars = dict(template.get("extra_vars") or {})
    if template.get("survey_enabled"):
        extra_vars.update({q["variable"]: q["default"] for q in template["survey_spec"]["spec"] if "default" in q})
    extra_vars.update(node.get("extra_data") or {})
    extra_vars.update(artifacts)
    extra_vars.update(answers)
    extra_vars.update(credential_vars)

    pdd = root / ident
    for sub in ("inventory", "env", "home"):
        (pdd / sub).mkdir(parents=True)
    (pdd / "project").symlink_to(REPO)  # AWX copies the project's checkout here
    (pdd / "inventory" / "hosts").write_text(lab.inventory_path.read_text())
    (pdd / "env" / "extravars").write_text(json.dumps(extra_vars))
    (pdd / "env" / "envvars").write_text(json.dumps({**credential_env, "HOME": str(pdd / "home")}))
    for path in (pdd / "env" / "extravars", pdd / "env" / "envvars"):
        path.chmod(0o600)
    proc = subprocess.run([str(RUNNER), "run", str(pdd), "-p", template["playbook"], "--ident", ident],
                          capture_output=True, text=True, timeout=900, cwd=pdd, env=ansible_env(), check=False)
    return Job(pdd, ident, proc, extra_vars)


def test_workflow_hands_off_through_artifacts_under_load(awx_setup, tmp_path):
    from labctl.load import LoadGenerator  # tests/lab, on sys.path through labfixtures

    began = time.monotonic()
    with running_lab("--x-version", X, "--y-version", Y, "--x-nodes", "1", "--y-nodes", "1", kong="real") as lab:
        (workflow,) = awx_setup["workflow_job_template"]
        given = {k: v for k, v in fast_gate(lab.run_dir).items() if k in SURVEY_ANSWERS}
        answers = {q["variable"]: given.get(q["variable"], q.get("default")) for q in workflow["survey_spec"]["spec"]}
        load = LoadGenerator(lab.frontend, targets=lab.load_targets, duration=900, rate=100).start()
        try:
            # Job 1: up to the point of no return. Y serves everything, X still runs, still frozen.
            job1 = run_node(lab, tmp_path, awx_setup, "upgrade_to_ponr", {}, answers, "upgrade_to_ponr")
            assert job1.rc == 0, job1.explain()
            assert "Stopping before the point of no return" in job1.stdout, job1.explain()
            report1 = job1.report()
            assert report1["status"] == "succeeded" and report1["stopped_before_point_of_no_return"] is True
            assert admin_version(lab.host("x1")["kong_admin_url"]) == X
            assert admin_version(lab.host("y1")["kong_admin_url"]) == Y
            assert lb_y_share(lab) == 100.0
            assert run_module("kong_config_freeze", dict(pg_args(lab), state="status"))["frozen"] is True
            # Its artifacts: the run's identity, which the next nodes need, and never kong_upgrade_finalize.
            expected = {"kong_upgrade_run_id": f"kong-{X}-to-{Y}", "kong_upgrade_x_version": X,
                        "kong_upgrade_y_version": Y, "kong_upgrade_strategy": "dual_cluster",
                        "kong_upgrade_y_pg_database": report1["database_in_use"]}
            assert {k: job1.artifacts.get(k) for k in HANDOFF} == expected, job1.artifacts
            assert report1["database_in_use"] == f"{pg_args(lab)['pg_database']}_{Y.replace('.', '_')}"
            assert job1.artifacts["kong_upgrade_status"] == "succeeded"
            assert "kong_upgrade_finalize" not in job1.artifacts
            finalize_at = time.monotonic()
            # The deny path (return_traffic_to_x.yml with these artifacts) ran here too until CI time
            # ran short: it is not run in make test (docs/awx.md says what was tested).

            # Approved: job 2, given only job 1's artifacts and the survey answers (and its own
            # kong_upgrade_finalize=true), in a fresh home: it resumes and retires X.
            job2 = run_node(lab, tmp_path, awx_setup, "finalize", job1.artifacts, answers, "finalize")
            assert job2.rc == 0, job2.explain()
            assert job2.extra_vars["kong_upgrade_finalize"] == "true"
            assert {k: job2.extra_vars[k] for k in HANDOFF} == expected
            assert "resumes the traffic shift at 100.0 %" in job2.stdout, job2.explain()
            report2 = job2.report()
            assert report2["status"] == "succeeded", report2
            assert [step["percent"] for step in report2["traffic_steps"]] == [100.0]  # judged again, not redone
            assert report2["stopped_before_point_of_no_return"] is False and report2["freeze_lifted"] is True
            assert report2["run_id"] == expected["kong_upgrade_run_id"]
            assert report2["database_in_use"] == expected["kong_upgrade_y_pg_database"]
            assert job2.artifacts["kong_upgrade_status"] == "succeeded"
        finally:
            load.stop()
        summary = load.summary()
        # Zero failed requests over the whole sequence; Y serves, X is decommissioned.
        assert_upgraded(lab, summary, Y)
        assert lb_y_share(lab) == 100.0
    print(textwrap.dedent(f"""
        AWX workflow through ansible-runner, real Kong {X} -> {Y}, 1 + 1 nodes: {summary['requests']} requests,
        0 failed; job 1 {finalize_at - began:.0f} s (with lab up), finalize {time.monotonic() - finalize_at:.0f} s
        (with lab down)"""))
