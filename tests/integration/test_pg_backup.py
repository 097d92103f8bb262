"""pg_backup on the lab: a verified dump of a 10,000-entity Kong database that real Kong 3.9.1
bootstrapped and imported (`kong migrations bootstrap`, `kong config db_import`), its restore, which a
real Kong node then serves from, and refusals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from ansible_runner import four_ways, run_module, run_sequence
from itlab import http_request, lab_session

SEED = 10000
SEED_SIZE = 10200  # `lab up --seed-size` is approximate; this gives more than SEED entities
LABEL = "pre-upgrade"
ENTITY_TABLES = ("services", "routes", "consumers", "plugins", "keyauth_credentials", "upstreams", "targets")


@pytest.fixture(scope="module")
def lab():
    with lab_session("--x-version", "3.9.1", "--y-version", "3.9.1", "--x-nodes", "1", "--y-nodes", "1",
                     "--seed-size", str(SEED_SIZE)) as lab:
        yield lab


@pytest.fixture(scope="module")
def backup_dir(lab):
    return lab.run_dir / "backups" / "kong"


def args(lab, backup_dir, **extra):
    return {**lab.pg_args(), "backup_dir": str(backup_dir), "label": LABEL, **extra}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def counts(lab, tables, database=None):
    return {t: lab.sql(f'SELECT count(*) FROM "{t}"', database=database)[0][0] for t in tables}


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_present_takes_a_verified_backup_of_10000_entities(lab, backup_dir):
    results = four_ways("pg_backup", args(lab, backup_dir))
    check, real, check_again, real_again = results
    assert not check["verified"] and not check["reused"]
    assert real["verified"] and not real["reused"]
    assert check_again["reused"] and real_again["reused"] and real_again["checksum"] == real["checksum"]
    meta = real["metadata"]
    dump = backup_dir / f"{LABEL}.dump"
    assert real["dump_path"] == str(dump)
    assert real["checksum"] == sha256(dump) == meta["sha256"]
    assert (backup_dir / f"{LABEL}.sha256").read_text().split()[0] == real["checksum"]
    on_disk = json.loads((backup_dir / f"{LABEL}.meta.json").read_text())
    assert on_disk["row_counts"] == meta["row_counts"] and on_disk["label"] == LABEL
    entities = sum(meta["row_counts"][t] for t in ENTITY_TABLES)
    assert entities >= SEED
    assert {k: v for k, v in meta["row_counts"].items() if k in ENTITY_TABLES} == counts(lab, ENTITY_TABLES)
    assert {row["subsystem"] for row in meta["schema_meta"]} >= {"core", "key-auth", "acme"}
    assert meta["server_version_num"] >= 150000 and "pg_dump" in meta["client_version"]
    assert mode(backup_dir) == 0o700
    for name in (f"{LABEL}.dump", f"{LABEL}.sha256", f"{LABEL}.meta.json"):
        assert mode(backup_dir / name) == 0o600, name


def test_verified_checks_an_existing_backup(lab, backup_dir):
    result = run_module("pg_backup", args(lab, backup_dir, state="verified"))
    assert not result.failed and not result.changed
    assert result["verified"] and result["checksum"] == sha256(backup_dir / f"{LABEL}.dump")


def test_restored_into_a_new_database_has_the_same_rows(lab, backup_dir):
    target = "kong_restored"
    restore = args(lab, backup_dir, state="restored", target_database=target)
    predicted = run_module("pg_backup", restore, check=True)
    assert not predicted.failed and predicted.changed
    assert lab.sql("SELECT count(*) FROM pg_database WHERE datname = %s", (target,), database="postgres") == [(0,)], \
        "check mode must not create the target database"
    results = four_ways("pg_backup", restore)
    real = results[1]
    meta = real["metadata"]
    for table, n in meta["row_counts"].items():
        assert real["restored_row_counts"][table] == n, table
    assert counts(lab, ENTITY_TABLES, database=target) == counts(lab, ENTITY_TABLES)
    assert LABEL in real["marker"] and meta["sha256"] in real["marker"]
    assert results[2]["marker"] == results[3]["marker"] == real["marker"]
    # Real Kong serves from the restored database: a node started on it lists every service and proxies.
    lab.start_node("y1", extra={"pg_database": target})
    y1 = lab.host("y1")
    status, services = http_request(y1["kong_admin_url"] + "/services?size=1000&tags=lab-seed")
    assert status == 200
    names = {service["name"] for service in services["data"]}
    while services.get("next"):
        services = http_request(y1["kong_admin_url"] + services["next"])[1]
        names |= {service["name"] for service in services["data"]}
    assert len(names) == counts(lab, ("services",))["services"]
    status, body = http_request(y1["kong_proxy_url"] + "/svc3/restored")
    assert status == 200 and body["path"] == "/restored", (status, body)
    lab.stop_node("y1")


def test_an_existing_empty_database_is_restored_into_not_replaced(lab, backup_dir):
    """An operator may create the target database beforehand (owner, encoding): with no table in it,
    the restore goes into it, and the result says nothing was dropped."""
    target = "kong_created_empty"
    assert not run_module("pg_backup", args(lab, backup_dir)).failed  # taken, or the one taken earlier
    lab.sql(f"CREATE DATABASE {target}", database="postgres")
    restored = run_module("pg_backup", args(lab, backup_dir, state="restored", target_database=target))
    assert not restored.failed and restored.changed, restored.get("msg")
    assert restored["replaced"] is False
    assert counts(lab, ENTITY_TABLES, database=target) == counts(lab, ENTITY_TABLES)


def test_restore_refuses_a_database_that_holds_something_else(lab, backup_dir):
    before = counts(lab, ENTITY_TABLES)
    result = run_module("pg_backup", args(lab, backup_dir, state="restored", target_database="kong"))
    assert result.failed and not result.changed
    assert "already has" in result["msg"] and "Nothing was changed" in result["msg"] and "force" in result["msg"]
    assert counts(lab, ENTITY_TABLES) == before


def test_refuses_a_pg_dump_older_than_the_server(lab, backup_dir, tmp_path):
    bindir = tmp_path / "old-pg-client-test-double"
    bindir.mkdir()
    double = bindir / "pg_dump"
    double.write_text("#!/bin/sh\n"
                      "# TEST DOUBLE for pg_backup's client version check: a pg_dump that reports PostgreSQL 13.\n"
                      "if [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 13.16 (kongops test double)'; "
                      "exit 0; fi\n"
                      "echo 'kongops test double: this pg_dump does not dump' >&2; exit 1\n", encoding="utf-8")
    double.chmod(0o755)
    for tool in ("psql", "pg_restore"):
        (bindir / tool).symlink_to(shutil.which(tool))
    refused = args(lab, backup_dir, label="old-client", pg_bin_dir=str(bindir))
    for result in run_sequence("pg_backup", [(refused, True), (refused, False)]):
        assert result.failed and not result.changed
        assert "pg_dump is version 13" in result["msg"] and "server is PostgreSQL 15" in result["msg"]
        assert "postgresql-client-15" in result["msg"]
    assert not list(backup_dir.glob("old-client*"))


def test_a_corrupted_dump_is_detected_and_never_reused(lab, backup_dir):
    label = "corrupt"
    taken = run_module("pg_backup", args(lab, backup_dir, label=label))
    assert not taken.failed and taken["verified"]
    dump = backup_dir / f"{label}.dump"
    data = bytearray(dump.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    dump.write_bytes(bytes(data))
    corrupted = sha256(dump)
    mtime = dump.stat().st_mtime_ns

    verified, present_check, present, restore = run_sequence("pg_backup", [
        (args(lab, backup_dir, label=label, state="verified"), False),
        (args(lab, backup_dir, label=label), True),
        (args(lab, backup_dir, label=label), False),
        (args(lab, backup_dir, label=label, state="restored", target_database="kong_from_corrupt"), False),
    ])
    assert verified.failed and not verified["verified"]
    assert "does not match its checksum" in verified["msg"]
    for result in (present_check, present):
        assert result.failed and not result.changed
        assert "does not verify" in result["msg"] and "Nothing was changed" in result["msg"]
        assert "force=true" in result["msg"]
    assert sha256(dump) == corrupted and dump.stat().st_mtime_ns == mtime
    assert restore.failed and "does not match its checksum" in restore["msg"]
    assert lab.sql("SELECT count(*) FROM pg_database WHERE datname = 'kong_from_corrupt'", database="postgres") == [(0,)]

    replaced = run_module("pg_backup", args(lab, backup_dir, label=label, force=True))
    assert not replaced.failed and replaced.changed and replaced["verified"]
    assert sha256(dump) == replaced["checksum"] != corrupted


def test_a_truncated_dump_with_a_matching_checksum_is_detected(lab, backup_dir):
    """Damage before the checksum was taken (the checksum file and the metadata both hold the damaged
    dump's checksum): `pg_restore --list` reads only the table of contents and passes; the full read of
    the archive catches it."""
    label = "truncated"
    taken = run_module("pg_backup", args(lab, backup_dir, label=label))
    assert not taken.failed
    dump = backup_dir / f"{label}.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 3])
    (backup_dir / f"{label}.sha256").write_text(f"{sha256(dump)}  {dump.name}\n")
    meta_file = backup_dir / f"{label}.meta.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "sha256": sha256(dump)}))
    verified = run_module("pg_backup", args(lab, backup_dir, label=label, state="verified"))
    assert verified.failed and not verified["verified"]
    assert "cannot read every data block" in verified["msg"] and "end of file" in verified["msg"]


def test_directory_format_with_parallel_jobs_round_trip(lab, backup_dir):
    label = "parallel"
    taken, again, restored = run_sequence("pg_backup", [
        (args(lab, backup_dir, label=label, format="directory", jobs=2), False),
        (args(lab, backup_dir, label=label, format="directory", jobs=2), False),
        (args(lab, backup_dir, label=label, format="directory", jobs=2, state="restored",
              target_database="kong_parallel"), False),
    ])
    assert not taken.failed and taken.changed and taken["verified"], taken.get("msg")
    assert not again.failed and not again.changed and again["reused"]
    assert not restored.failed and restored.changed, restored.get("msg")
    dump = backup_dir / f"{label}.dumpdir"
    assert dump.is_dir() and mode(dump) == 0o700
    assert all(mode(f) == 0o600 for f in dump.iterdir()) and len(list(dump.iterdir())) > 5
    assert counts(lab, ENTITY_TABLES, database="kong_parallel") == counts(lab, ENTITY_TABLES)
    for table, n in taken["metadata"]["row_counts"].items():
        assert restored["restored_row_counts"][table] == n, table


def test_a_backup_of_a_database_that_changed_since_is_superseded_not_reused(lab, backup_dir):
    """A failed run thawed the database and admins wrote to it; the next run's freeze fingerprint
    differs from the one in the backup: a new backup is taken and the old one is kept, restorable."""
    label = "fingerprinted"
    first, same, predicted = run_sequence("pg_backup", [
        (args(lab, backup_dir, label=label, fingerprint="fp-at-first-freeze"), False),
        (args(lab, backup_dir, label=label, fingerprint="fp-at-first-freeze"), False),
        (args(lab, backup_dir, label=label, fingerprint="fp-after-admin-writes"), True),
    ])
    assert not first.failed and first.changed and first["metadata"]["fingerprint"] == "fp-at-first-freeze"
    assert not same.failed and not same.changed and same["reused"] and same["superseded"] is None
    old_checksum = first["checksum"]
    assert not predicted.failed and predicted.changed and not predicted["reused"]
    kept_as = predicted["superseded"]
    assert kept_as.startswith(f"{label}.superseded-") and predicted["superseded_fingerprint"] == "fp-at-first-freeze"
    assert sha256(backup_dir / f"{label}.dump") == old_checksum, "check mode must not touch the backup"
    assert not list(backup_dir.glob(f"{kept_as}*"))

    new, kept, restored_old = run_sequence("pg_backup", [
        (args(lab, backup_dir, label=label, fingerprint="fp-after-admin-writes"), False),
        (args(lab, backup_dir, label=kept_as, state="verified"), False),
        (args(lab, backup_dir, label=kept_as, state="restored", target_database="kong_from_superseded"), False),
    ])
    assert not new.failed and new.changed and new["verified"] and not new["reused"], new.get("msg")
    assert new["superseded"] == kept_as and new["metadata"]["fingerprint"] == "fp-after-admin-writes"
    assert any("database changed since backup" in w for w in new.get("warnings", [])), new.get("warnings")
    assert sha256(backup_dir / f"{label}.dump") == new["checksum"] != old_checksum
    # The old backup is whole under its new label: its checksum, its metadata, a restore from it.
    assert not kept.failed and kept["checksum"] == old_checksum, kept.get("msg")
    assert kept["metadata"]["label"] == kept_as and kept["metadata"]["superseded_label"] == label
    assert mode(backup_dir / f"{kept_as}.dump") == 0o600 and mode(backup_dir / f"{kept_as}.meta.json") == 0o600
    assert not restored_old.failed and restored_old.changed, restored_old.get("msg")
    assert kept_as in restored_old["marker"]


def test_replace_restored_refreshes_only_a_database_restored_from_the_same_label(lab, backup_dir):
    label = "refreshed"
    target = "kong_refreshed"
    restore = args(lab, backup_dir, label=label, state="restored", target_database=target)
    first, first_restore, newer = run_sequence("pg_backup", [
        (args(lab, backup_dir, label=label, fingerprint="one"), False),
        (restore, False),
        (args(lab, backup_dir, label=label, fingerprint="two"), False),
    ])
    assert not first_restore.failed and first["checksum"] in first_restore["marker"]
    assert not newer.failed and newer["checksum"] != first["checksum"]

    refused, predicted, replaced, again = run_sequence("pg_backup", [
        (restore, False),
        (dict(restore, replace_restored=True), True),
        (dict(restore, replace_restored=True), False),
        (dict(restore, replace_restored=True), False),
    ])
    assert refused.failed and "was not restored from backup" in refused["msg"] and "Nothing was changed" in refused["msg"]
    assert not predicted.failed and predicted.changed
    assert not replaced.failed and replaced.changed and replaced["replaced"], replaced.get("msg")
    assert newer["checksum"] in replaced["marker"]
    assert not again.failed and not again.changed
    # A database with tables that no restore of this label made is never replaced without force.
    other = run_module("pg_backup", dict(args(lab, backup_dir, label=label, state="restored", target_database="kong"),
                                         replace_restored=True))
    assert other.failed and "already has" in other["msg"]


def test_what_an_interrupted_take_left_is_never_reused_and_the_backup_is_taken_again(lab, backup_dir):
    """A run killed between renaming its new dump into place and writing its checksum leaves a dump
    without checksum, beside the marker of its take; one killed inside pg_dump leaves its partial dump.
    Neither is a backup: a later run says what it removes and takes a verified one."""
    label = "interrupted"
    taken = run_module("pg_backup", args(lab, backup_dir, label=label))
    assert not taken.failed and not (backup_dir / f"{label}.taking").exists(), "the marker outlived the take"
    dump = backup_dir / f"{label}.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    (backup_dir / f"{label}.sha256").unlink()
    (backup_dir / f"{label}.taking").write_text("{}")
    (backup_dir / f"{label}.dump.partial").write_bytes(b"PGDMP")

    check = run_module("pg_backup", args(lab, backup_dir, label=label), check=True)
    assert not check.failed and check.changed and (backup_dir / f"{label}.taking").exists()
    real, again = run_sequence("pg_backup", [
        (args(lab, backup_dir, label=label), False),
        (args(lab, backup_dir, label=label), False),
    ])
    assert not real.failed and real.changed and real["verified"] and not real["reused"], real.get("msg")
    assert sorted(Path(path).name for path in real["unfinished"]) == sorted(
        [f"{label}.dump", f"{label}.meta.json", f"{label}.taking", f"{label}.dump.partial"])
    assert any("left it unfinished" in warning for warning in real.get("warnings", [])), real.get("warnings")
    assert sorted(path.name for path in backup_dir.glob(f"{label}.*")) == \
        [f"{label}.dump", f"{label}.meta.json", f"{label}.sha256"]
    assert real["checksum"] == sha256(dump)
    assert not again.failed and not again.changed and again["reused"] and again["unfinished"] == []


def test_a_database_left_half_restored_by_an_interrupted_run_is_restored_again(lab, backup_dir):
    target = "kong_half_restored"
    meta = run_module("pg_backup", args(lab, backup_dir))["metadata"]  # taken, or the one taken earlier
    # What a run killed inside pg_restore leaves: some tables, and the comment of a restore in progress.
    lab.sql(f"CREATE DATABASE {target}", database="postgres")
    lab.sql("CREATE TABLE services (id uuid PRIMARY KEY)", database=target)
    lab.sql(f"COMMENT ON DATABASE {target} IS 'kongops.upgrade restoring {LABEL} sha256:{meta['sha256']} since now'",
            database="postgres")
    restored, again = run_sequence("pg_backup", [
        (args(lab, backup_dir, state="restored", target_database=target), False),
        (args(lab, backup_dir, state="restored", target_database=target), False),
    ])
    assert not restored.failed and restored.changed and restored["replaced"], restored.get("msg")
    assert any("left half restored" in warning for warning in restored.get("warnings", [])), restored.get("warnings")
    assert counts(lab, ENTITY_TABLES, database=target) == {table: meta["row_counts"][table] for table in ENTITY_TABLES}
    assert not again.failed and not again.changed
