"""The roles' argument specs hold every variable a user may set, with the defaults the roles use.

ansible-doc and AWX read the specs; a variable of roles/kong_upgrade/defaults/main.yml that no
spec declares is invisible there and unchecked at the role's entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[3] / "roles"
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
