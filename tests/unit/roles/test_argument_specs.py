"""The roles' argument specs hold every variable a user may set, with the defaults the roles use.

ansible-doc and AWX read the specs; a variable of roles/kong_upgrade/defaults/main.yml that no
spec declares is invisible there and unchecked at the role's entry."""

from __future__ import annotations

import re

import pytest
import yaml
from task_files import ROLES, ROOT, include_target, load, walk

STRATEGIES = ("dual_cluster", "in_place", "blue_green", "rolling")
DEFAULTS = yaml.safe_load((ROLES / "kong_upgrade" / "defaults" / "main.yml").read_text())


def _specs(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]


def test_every_default_is_declared_by_a_strategy_role() -> None:
    declared = set()
    for role in STRATEGIES:
        declared |= set(_specs(role)["main"]["options"])
    missing = sorted(set(DEFAULTS) - declared)
    assert not missing, f"defaults that no strategy role's argument spec declares: {missing}"


@pytest.mark.parametrize("role", STRATEGIES)
def test_a_declared_default_is_the_roles_default(role: str) -> None:
    wrong = {}
    for name, option in _specs(role)["main"]["options"].items():
        if "default" not in option or name not in DEFAULTS:
            continue
        value = DEFAULTS[name]
        if isinstance(value, str) and "{{" in value:
            continue  # a templated default is described, not repeated
        if option["default"] != value:
            wrong[name] = (option["default"], value)
    assert not wrong, f"{role}: spec default != roles/kong_upgrade/defaults: {wrong}"


@pytest.mark.parametrize("role", STRATEGIES)
def test_every_declared_option_is_a_variable_of_the_roles(role: str) -> None:
    unknown = sorted(n for n in _specs(role)["main"]["options"] if n not in DEFAULTS)
    # The few a user sets that have no default: the versions (read from the nodes) and the rolling
    # strategy's own settings live in roles/rolling/defaults.
    rolling_defaults = yaml.safe_load((ROLES / "rolling" / "defaults" / "main.yml").read_text()) or {} \
        if (ROLES / "rolling" / "defaults" / "main.yml").exists() else {}
    unknown = [n for n in unknown if n not in rolling_defaults and n not in ("kong_upgrade_x_version",
                                                                             "kong_upgrade_y_version")]
    assert not unknown, f"{role} declares options the roles never define: {unknown}"


def _reads(task_file: str, seen: set[str]) -> set[str]:
    """The kong_upgrade_* names a step's task file reads, with the files it includes."""
    if task_file in seen:
        return set()
    seen.add(task_file)
    path = ROLES / "kong_upgrade" / "tasks" / task_file
    if not path.exists():
        return set()
    names = set(re.findall(r"\bkong_upgrade_[a-z0-9_]+", path.read_text()))
    for task in walk(load(path)):
        included = include_target(task)
        if included:
            names |= _reads(included, seen)
    return names


def test_every_step_entry_point_declares_the_defaults_it_reads() -> None:
    wrong = {}
    for entry, spec in _specs("kong_upgrade").items():
        if entry == "main":
            continue
        wanted = {n for n in _reads(f"{entry}.yml", set()) if n in DEFAULTS}
        declared = set(spec.get("options") or {})
        if not wanted <= declared:
            wrong[entry] = sorted(wanted - declared)
    assert not wrong, f"step entry points that do not declare defaults they read: {wrong}"


def _includes_of_the_steps() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(ROOT.glob("roles/*/tasks/*.yml")) + sorted(ROOT.glob("playbooks/*.yml")) \
            + sorted(ROOT.glob("extensions/awx/playbooks/*.yml")):
        for task in walk(load(path)):
            include = task.get("ansible.builtin.include_role") or task.get("include_role")
            if isinstance(include, dict) and include.get("name") == "kongops.upgrade.kong_upgrade":
                found.append((f"{path.relative_to(ROOT)}: {task.get('name')}", include))
    return found


def test_the_steps_are_included_without_loading_their_specs() -> None:
    """ansible-core reads and deep-copies meta/argument_specs.yml at every include_role that may
    validate, about 0.07 s each for this role's; no include names an entry point (tasks_from keeps
    the .yml), so rolespec_validate: false costs no check."""
    includes = _includes_of_the_steps()
    assert len(includes) > 90
    loading = [where for where, include in includes if include.get("rolespec_validate") is not False]
    assert not loading, f"includes of kong_upgrade's steps without rolespec_validate: false: {loading}"
    naming = [where for where, include in includes if not str(include.get("tasks_from", "")).endswith(".yml")]
    assert not naming, f"includes that name an entry point, so would be validated: {naming}"
