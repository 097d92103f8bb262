"""Every module_defaults entry of the roles names a module or an action group, never a module option.

An option indented one level too deep (under module_defaults instead of the module) is valid YAML
and passes ansible-lint, but Ansible fails the task at run time ("Could not resolve action ...
in module_defaults"), which only a run that reaches the task would show."""

from __future__ import annotations

from task_files import role_task_files

FILES = role_task_files()


def test_module_defaults_name_modules_or_groups():
    wrong = []
    for (role, name), tasks in FILES.items():
        for task in tasks:
            defaults = task.get("module_defaults")
            if not isinstance(defaults, dict):
                continue
            for key in defaults:
                if not (key.startswith("group/") or "." in key):
                    wrong.append(f"roles/{role}/tasks/{name}: '{task.get('name')}': module_defaults has {key!r}")
    assert not wrong, "\n".join(wrong)
