# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read what `kong migrations list` and `kong migrations status` say (kong-facts 2.4, 2.5).

Private to the collection; pure parsing, no I/O.
"""

from __future__ import annotations

import json

LIST_EXIT_STATES = {
    0: "up_to_date",
    3: "needs_bootstrap",
    4: "pending",
    5: "new",
}

ABORTED_LINE = "aborted: another node is performing database changes"
PENDING_UP_ERROR = "Database has pending migrations; run 'kong migrations finish'"

_SECTIONS = {
    "Executed migrations:": "executed",
    "Pending migrations:": "pending",
    "New migrations available:": "new",
}


class MigrationsOutputError(ValueError):
    """Output that does not look like `kong migrations list` / `status`."""


def empty_state():
    return {"needs_bootstrap": False, "executed": {}, "pending": {}, "new": {}, "missing": {}}


def parse_list(rc, stdout):
    """Turn `kong migrations list` exit code and stdout into a state dict.

    The dict has ``state`` (up_to_date, needs_bootstrap, pending, new), and per
    subsystem lists under ``executed``, ``pending`` and ``new``. Exit code 1 (or any
    other) raises MigrationsOutputError: Kong could not inspect the database.
    """
    if rc not in LIST_EXIT_STATES:
        raise MigrationsOutputError("`kong migrations list` failed with exit code %s" % rc)
    result = empty_state()
    result["state"] = LIST_EXIT_STATES[rc]
    if rc == 3:
        result["needs_bootstrap"] = True
        return result
    section = None
    for raw in stdout.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line in _SECTIONS:
            section = _SECTIONS[line]
            continue
        if line.startswith("Run 'kong migrations"):
            section = None
            continue
        if section is None or ": " not in line:
            continue
        subsystem, names = line.split(": ", 1)
        result[section][subsystem.strip()] = [n.strip() for n in names.split(",") if n.strip()]
    return result


def parse_status(stdout):
    """Turn the JSON of `kong migrations status` (3.0+) into the same state dict.

    The JSON is one line; real Kong 3.x may print other lines after it on a pipe (its
    `prefix directory ... not found, trying to create it` comes last), so the last line
    that parses as a JSON object is taken.
    """
    doc = None
    error = "no output"
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
            break
        except ValueError as exc:
            error = str(exc)
    if doc is None:
        raise MigrationsOutputError("`kong migrations status` did not print JSON: %s" % error)
    if not isinstance(doc, dict):
        raise MigrationsOutputError("`kong migrations status` printed JSON that is not an object")
    result = empty_state()
    result["needs_bootstrap"] = bool(doc.get("needs_bootstrap"))
    for key, target in (("executed_migrations", "executed"), ("pending_migrations", "pending"),
                        ("new_migrations", "new"), ("missing_migrations", "missing")):
        for entry in doc.get(key) or []:
            result[target][entry.get("subsystem")] = list(entry.get("migrations") or [])
    if result["needs_bootstrap"]:
        result["state"] = "needs_bootstrap"
    elif result["pending"]:
        result["state"] = "pending"
    elif result["new"]:
        result["state"] = "new"
    else:
        result["state"] = "up_to_date"
    return result


def count(section):
    """Number of migrations in one section (a dict of subsystem -> names)."""
    return sum(len(names) for names in section.values())
