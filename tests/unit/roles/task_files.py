"""The roles' task files and the playbooks, read statically for the tests of how steps are included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
ROLES = ROOT / "roles"
# Where a task list holds further tasks: blocks, and the plays of a playbook.
SECTIONS = ("block", "rescue", "always", "pre_tasks", "tasks", "post_tasks", "handlers")


def load(path: Path) -> list[Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or []


def walk(items: Any, conditional: bool = False) -> Iterator[dict[str, Any]]:
    """Every task of a task file or playbook, blocks and plays included, each with `_conditional`:
    it or a block around it has a `when`."""
    for task in items or []:
        if not isinstance(task, dict):
            continue
        here = conditional or "when" in task
        yield {**task, "_conditional": here}
        for section in SECTIONS:
            yield from walk(task.get(section), here)


def include_target(task: dict[str, Any]) -> str | None:
    """The task file a task includes (include_tasks or import_tasks, by name or `file:`;
    include_role's tasks_from), or None."""
    for key in ("ansible.builtin.include_tasks", "ansible.builtin.import_tasks"):
        if key in task:
            target = task[key]
            return str(target.get("file", "")) if isinstance(target, dict) else str(target)
    role = task.get("ansible.builtin.include_role")
    if isinstance(role, dict) and role.get("tasks_from"):
        return str(role["tasks_from"])
    return None


def role_task_files() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """{(role, file name): every task of roles/<role>/tasks/<file>}."""
    return {(path.parent.parent.name, path.name): list(walk(load(path)))
            for path in sorted(ROLES.glob("*/tasks/*.yml"))}
