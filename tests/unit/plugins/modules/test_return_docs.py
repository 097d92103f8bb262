"""Every documented return value of every module carries a `sample`, nested keys included: what
ansible-doc shows users of the value, and what collection reviewers look for."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

MODULES = Path(__file__).resolve().parents[4] / "plugins" / "modules"


def _return_doc(path):
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "RETURN":
            return yaml.safe_load(node.value.value) or {}
    return None


def _without_sample(doc, prefix=""):
    for key, spec in (doc or {}).items():
        if not isinstance(spec, dict):
            continue
        if "sample" not in spec:
            yield prefix + key
        yield from _without_sample(spec.get("contains"), prefix + key + ".")


def test_every_module_documents_its_return_values_with_samples():
    paths = sorted(MODULES.glob("*.py"))
    assert len(paths) >= 10
    missing = []
    for path in paths:
        doc = _return_doc(path)
        assert doc is not None, f"{path.name} has no RETURN"
        missing += [f"{path.name}: {key}" for key in _without_sample(doc)]
    assert not missing, "return values without a sample:\n" + "\n".join(missing)
