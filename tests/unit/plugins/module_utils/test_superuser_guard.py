"""Unit tests of the superuser guard's SQL and of what a restore leaves out of an archive.

The guard's behaviour on PostgreSQL is proven by tests/integration/test_freeze_superuser_guard.py;
these check what can be checked without a server."""

import re

from ansible_collections.kongops.upgrade.plugins.module_utils._backup import split_restore_list
from ansible_collections.kongops.upgrade.plugins.module_utils._superuser_guard import (
    EVENT_TRIGGERS,
    FUNCTIONS,
    install_sql,
    thaw_sql,
)

# `pg_restore --list` of a Kong 3.9.1 database frozen with the superuser guard on the lab's PostgreSQL 15
# (an excerpt, as pg_restore 15.18 printed it).
LISTING = """;
; Archive created at 2026-12-06 01:31:02 UTC
;     dbname: kong
;
; Selected TOC Entries:
;
8; 2615 18096 SCHEMA - kongops_guard lab_admin
3922; 0 0 COMMENT - SCHEMA kongops_guard lab_admin
3923; 0 0 ACL - SCHEMA kongops_guard lab_admin
274; 1255 18102 FUNCTION kongops_guard check_ddl() lab_admin
260; 1255 18100 FUNCTION kongops_guard refuse(text, text) lab_admin
249; 1255 17218 FUNCTION public kongops_freeze_guard() kong
246; 1259 18043 TABLE public kongops_freeze kong
217; 1259 16412 TABLE public services kong
3910; 0 18043 TABLE DATA public kongops_freeze kong
3615; 2606 18052 CONSTRAINT public kongops_freeze kongops_freeze_pkey kong
3635; 2620 17247 TRIGGER public services kongops_freeze_guard kong
3636; 2620 17248 TRIGGER public services kongops_freeze_guard_truncate kong
3734; 2620 18104 TRIGGER public kongops_freeze kongops_freeze_protect kong
3735; 2620 18105 TRIGGER public kongops_freeze kongops_freeze_protect_truncate kong
3351; 3466 18106 EVENT TRIGGER - kongops_freeze_ddl lab_admin
3352; 3466 18107 EVENT TRIGGER - kongops_freeze_drop lab_admin
3353; 3466 18108 EVENT TRIGGER - audit_ddl postgres
3354; 0 0 COMMENT - EVENT TRIGGER audit_ddl postgres
"""


def test_a_restore_leaves_out_event_triggers_and_the_superuser_guard_only():
    kept, left_out = split_restore_list(LISTING)
    assert left_out == [
        "SCHEMA - kongops_guard lab_admin",
        "COMMENT - SCHEMA kongops_guard lab_admin",
        "ACL - SCHEMA kongops_guard lab_admin",
        "FUNCTION kongops_guard check_ddl() lab_admin",
        "FUNCTION kongops_guard refuse(text, text) lab_admin",
        "TRIGGER public kongops_freeze kongops_freeze_protect kong",
        "TRIGGER public kongops_freeze kongops_freeze_protect_truncate kong",
        "EVENT TRIGGER - kongops_freeze_ddl lab_admin",
        "EVENT TRIGGER - kongops_freeze_drop lab_admin",
        "EVENT TRIGGER - audit_ddl postgres",
        "COMMENT - EVENT TRIGGER audit_ddl postgres",
    ]
    # The freeze itself stays: its function, table, row and the guard triggers of every table.
    restored = "\n".join(kept)
    for entry in ("FUNCTION public kongops_freeze_guard() kong", "TABLE public kongops_freeze kong",
                  "TABLE DATA public kongops_freeze kong", "TRIGGER public services kongops_freeze_guard kong",
                  "TRIGGER public services kongops_freeze_guard_truncate kong", "; Selected TOC Entries:"):
        assert entry in restored


def test_an_archive_without_a_guard_is_restored_whole():
    listing = "\n".join(line for line in LISTING.splitlines()
                        if "kongops_guard" not in line and "EVENT TRIGGER" not in line and "protect" not in line)
    kept, left_out = split_restore_list(listing)
    assert left_out == [] and kept == listing.splitlines()


def test_the_install_fills_every_placeholder_and_quotes_the_schema():
    sql = install_sql('we"ird')
    assert not re.search(r"__[A-Z_]+__", sql), re.findall(r"__[A-Z_]+__", sql)
    assert '"we""ird"."kongops_freeze"' in sql and "'we\"ird'" in sql
    for name in FUNCTIONS:
        assert f'CREATE FUNCTION "kongops_guard".{name}(' in sql
    for name in EVENT_TRIGGERS:
        assert f'CREATE EVENT TRIGGER "{name}"' in sql and f'ALTER EVENT TRIGGER "{name}" ENABLE ALWAYS' in sql
    assert sql.startswith("BEGIN;") and sql.rstrip().endswith("COMMIT;")


def test_a_thaw_drops_the_event_triggers_before_anything_they_guard():
    statements = thaw_sql(["services"], "public").split(";\n")
    first_guarded = next(i for i, s in enumerate(statements) if "kongops_freeze_guard" in s)
    assert all(i < first_guarded for i, s in enumerate(statements) if "EVENT TRIGGER" in s)
    assert not [s for s in thaw_sql(["services"], "public", event_triggers=False, guard_schema=False).split(";\n")
                if "EVENT TRIGGER" in s or "kongops_guard" in s]
