"""How the roles' task files are included, read statically (docs/scale.md).

A strategy runs its procedure once (a run_once block) in a play that also holds the nodes. A file
with node steps (a loop through kongops.upgrade.node_items), or one that includes such a file,
must be included with `run_once: false`: an include that inherits run_once is included for the
first host only, and its node steps would silently run nowhere. Every other include inherits
run_once: included for every host of the play, it would cost a worker per host for nothing.
An include or node step that applies only sometimes may template run_once as the negation of its
`when` (over every host where it applies, skipped once where it does not); it must then have a
`when` of its own or from its block."""

from __future__ import annotations

from task_files import ROLES, include_target, load, role_task_files


def _runs_for_every_host(task):
    """run_once: false, or a template (skipped once where the task does not apply) under a `when`."""
    run_once = task.get("run_once")
    if run_once is False:
        return True
    return isinstance(run_once, str) and run_once.strip().startswith("{{") and task["_conditional"]


def _resolve(role, target):
    """(role, file) of an include from role's tasks: include_role names kong_upgrade's files."""
    own = (role, target)
    shared = ("kong_upgrade", target)
    return shared if shared in FILES and role != "kong_upgrade" and own not in FILES else own


FILES = role_task_files()


def _with_node_steps():
    found = {key for key, tasks in FILES.items()
             if any("node_items" in str(task.get("loop", "")) + str(task.get("vars", "")) for task in tasks)}
    grew = True
    while grew:
        grew = False
        for key, tasks in FILES.items():
            if key in found:
                continue
            if any(include_target(task) and _resolve(key[0], include_target(task)) in found for task in tasks):
                found.add(key)
                grew = True
    return found


def test_node_steps_are_found():
    with_steps = _with_node_steps()
    for key in [("kong_upgrade", "nodes.yml"), ("kong_upgrade", "start_y.yml"), ("kong_upgrade", "preflight.yml"),
                ("rolling", "main.yml"), ("in_place", "main.yml")]:
        assert key in with_steps, key
    assert ("kong_upgrade", "phase.yml") not in with_steps


def test_every_include_of_node_steps_runs_for_every_host_and_no_other_does():
    with_steps = _with_node_steps()
    wrong = []
    for (role, name), tasks in FILES.items():
        for task in tasks:
            target = include_target(task)
            if target is None:
                continue
            needs = _resolve(role, target) in with_steps
            if needs and not _runs_for_every_host(task):
                wrong.append(f"{role}/tasks/{name}: '{task.get('name')}' includes {target}, which has node steps: "
                             "it needs run_once: false (or a run_once template under a when)")
            if not needs and "run_once" in task:
                wrong.append(f"{role}/tasks/{name}: '{task.get('name')}' includes {target}, which has no node step: "
                             "let it inherit run_once")
    assert not wrong, "\n".join(wrong)


def test_every_node_step_runs_for_every_host():
    wrong = [f"{role}/tasks/{name}: '{task.get('name')}'"
             for (role, name), tasks in FILES.items() for task in tasks
             if "node_items" in str(task.get("loop", "")) and not _runs_for_every_host(task)]
    assert not wrong, "node steps without run_once: false (or a run_once template under a when):\n" + "\n".join(wrong)


def test_a_templated_run_once_is_found_and_needs_a_when():
    templated = [task for tasks in FILES.values() for task in tasks if isinstance(task.get("run_once"), str)]
    assert templated, "the templated run_once of nodes.yml and the rolling steps should be found"
    assert not _runs_for_every_host({"run_once": "{{ x }}", "_conditional": False})
    assert _runs_for_every_host({"run_once": "{{ x }}", "_conditional": True})


def test_each_strategy_runs_its_procedure_once():
    for strategy in ("dual_cluster", "in_place", "blue_green", "rolling"):
        top = load(ROLES / strategy / "tasks" / "main.yml")
        assert len(top) == 1 and top[0].get("run_once") is True and top[0].get("delegate_to") == "localhost" \
            and top[0].get("any_errors_fatal") is True, strategy
