"""pg_backup after a take that was cut short (a killed run): what it left is never taken for a backup.

The take is scripted (no PostgreSQL): ``ScriptedBackup.take`` writes a good backup as the real one
would, so only the module's decision is under test; tests/integration/test_pg_backup.py runs the
same case with pg_dump on the lab."""

import hashlib
import json

import pytest

from ansible_collections.kongops.upgrade.plugins.module_utils._backup import Backup, BackupError, BackupPaths
from ansible_collections.kongops.upgrade.plugins.modules import pg_backup

LISTING = "3401; 0 16390 TABLE DATA public services kong\n"
GOOD = b"PGDMP a complete dump"


class FakePg:
    """pg_restore reads any dump (the checksum is what tells a changed one)."""

    def tool(self, name):
        return name

    def run(self, argv, data=None):
        return (0, LISTING, "") if argv[1] == "--list" else (0, "", "")


class ScriptedBackup(Backup):
    """A Backup whose take writes a good backup and whose database answers nothing else."""

    taken = 0

    def preflight(self):
        return {"server_version_num": 150000, "client_version": "pg_dump 15", "database_size_bytes": 1}

    def check_destination(self, db_size):
        pass

    def take(self, facts, fingerprint=None, archive_as=None):
        self.taken += 1
        assert not self.paths.leftovers(), "the take starts with what the interrupted one left still there"
        write(self.paths, GOOD, fingerprint)
        return self.verify()


class FakeModule:
    def __init__(self, check_mode=False, **params):
        self.params = {"fingerprint": "f1", "force": False, **params}
        self.check_mode = check_mode
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)


def write(paths, content, fingerprint="f1", checksum=True, meta=True):
    with open(paths.dump, "wb") as handle:
        handle.write(content)
    digest = hashlib.sha256(content).hexdigest()
    if checksum:
        with open(paths.checksum, "w") as handle:
            handle.write(f"{digest}  pre.dump\n")
    if meta:
        with open(paths.meta, "w") as handle:
            json.dump({"label": "pre", "sha256": digest, "fingerprint": fingerprint, "row_counts": {"services": 1}},
                      handle)


def present(tmp_path, check_mode=False):
    paths = BackupPaths(str(tmp_path), "pre", "custom")
    backup = ScriptedBackup(FakePg(), paths)
    module = FakeModule(check_mode=check_mode)
    result = {"changed": False}
    pg_backup.ensure_present(module, backup, result)
    return result, module, backup


def files(tmp_path):
    return sorted(path.name for path in tmp_path.iterdir())


def test_a_dump_renamed_into_place_before_its_checksum_was_written_is_taken_again(tmp_path):
    # Killed between renaming the new dump into place and writing its checksum: a dump and metadata,
    # no checksum, and the marker of the take.
    paths = BackupPaths(str(tmp_path), "pre", "custom")
    write(paths, b"PGDMP the dump of the killed run", checksum=False)
    (tmp_path / "pre.taking").write_text("{}")

    checked, module, backup = present(tmp_path, check_mode=True)
    assert checked["changed"] and backup.taken == 0
    assert files(tmp_path) == ["pre.dump", "pre.meta.json", "pre.taking"], "check mode removed something"
    assert "would remove" in module.warnings[0]

    result, module, backup = present(tmp_path)
    assert result["changed"] and result["verified"] and not result["reused"] and backup.taken == 1
    assert sorted(result["unfinished"]) == sorted([paths.dump, paths.meta, paths.taking])
    assert "left it unfinished (it does not verify: checksum file" in module.warnings[0], module.warnings
    assert files(tmp_path) == ["pre.dump", "pre.meta.json", "pre.sha256"]
    assert open(paths.dump, "rb").read() == GOOD

    again, module, backup = present(tmp_path)
    assert not again["changed"] and again["reused"] and again["unfinished"] == [] and module.warnings == []


def test_a_partial_dump_of_a_killed_pg_dump_is_removed_and_the_backup_taken(tmp_path):
    (tmp_path / "pre.dump.partial").write_bytes(b"PGDMP half")
    (tmp_path / "pre.taking").write_text("{}")
    result, module, backup = present(tmp_path)
    assert result["changed"] and backup.taken == 1
    assert sorted(result["unfinished"]) == [str(tmp_path / "pre.dump.partial"), str(tmp_path / "pre.taking")]
    assert "removed" in module.warnings[0]
    assert files(tmp_path) == ["pre.dump", "pre.meta.json", "pre.sha256"]


def test_a_backup_that_verified_before_the_take_was_cut_short_is_reused(tmp_path):
    # Killed after the new backup verified, while removing the dump it replaced and its marker.
    paths = BackupPaths(str(tmp_path), "pre", "custom")
    write(paths, GOOD)
    (tmp_path / "pre.dump.previous").write_bytes(b"PGDMP the dump it replaced")
    (tmp_path / "pre.taking").write_text("{}")
    result, _module, backup = present(tmp_path)
    assert not result["changed"] and result["reused"] and backup.taken == 0
    assert files(tmp_path) == ["pre.dump", "pre.meta.json", "pre.sha256"]


def test_a_backup_that_does_not_verify_without_the_marker_is_refused_and_kept(tmp_path):
    # Not a take of ours cut short: someone's backup, damaged. Never removed without force.
    paths = BackupPaths(str(tmp_path), "pre", "custom")
    write(paths, b"PGDMP someone's dump", checksum=False)
    with pytest.raises(BackupError, match="does not verify.*Nothing was changed"):
        present(tmp_path)
    assert files(tmp_path) == ["pre.dump", "pre.meta.json"]


class TargetBackup(ScriptedBackup):
    """A good backup, and a target database in the state ``target`` (exists, comment, tables)."""

    def __init__(self, paths, target):
        super().__init__(FakePg(), paths)
        self.target = target
        self.restores = []

    def target_state(self, target):
        return self.target

    def restore(self, target, meta, exists, force):
        self.restores.append((target, exists, force))
        # (row counts, marker, archive entries left out: Backup.restore's three results)
        return {"services": 1}, f"kongops.upgrade restored pre sha256:{meta['sha256']} at now", []


def restored(tmp_path, target, check_mode=False):
    paths = BackupPaths(str(tmp_path), "pre", "custom")
    write(paths, GOOD)
    backup = TargetBackup(paths, target)
    module = FakeModule(check_mode=check_mode, target_database="kong_y", replace_restored=False)
    result = {"changed": False}
    pg_backup.ensure_restored(module, backup, result)
    return result, module, backup


def test_a_database_left_half_restored_by_a_killed_run_is_restored_again(tmp_path):
    half = (True, "kongops.upgrade restoring pre sha256:abc since 2026-12-06T01:00:00Z", 12)
    checked, module, backup = restored(tmp_path, half, check_mode=True)
    assert checked["changed"] and backup.restores == [] and "would be dropped" in module.warnings[0]
    result, module, backup = restored(tmp_path, half)
    assert result["changed"] and backup.restores == [("kong_y", True, True)], backup.restores
    assert result["unfinished"] == half[1] and "left half restored by an interrupted run" in module.warnings[0]


def test_a_database_restoring_another_label_is_still_refused(tmp_path):
    other = (True, "kongops.upgrade restoring other sha256:abc since 2026-12-06T01:00:00Z", 12)
    with pytest.raises(BackupError, match="already has 12 tables and was not restored from backup pre"):
        restored(tmp_path, other)


def test_a_backup_whose_take_never_finished_is_not_restored(tmp_path):
    paths = BackupPaths(str(tmp_path), "pre", "custom")
    write(paths, GOOD)
    with open(paths.taking, "w") as handle:
        handle.write("{}")
    module = FakeModule(target_database="kong_restored", replace_restored=False)
    with pytest.raises(BackupError, match="never finished.*Nothing was changed"):
        pg_backup.ensure_restored(module, ScriptedBackup(FakePg(), paths), {})
