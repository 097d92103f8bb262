"""Unit tests for backup verification (_backup.Backup.verify) with a scripted pg_restore."""

import hashlib
import json

import pytest

from ansible_collections.kongops.upgrade.plugins.module_utils._backup import Backup, BackupError, BackupPaths

LISTING = ("; Archive created at 2026-01-01\n"
           "3401; 0 16390 TABLE DATA public services kong\n"
           "3402; 0 16400 TABLE DATA public routes kong\n")


class FakePg:
    """pg_restore answers: `--list` gives ``listing``, a full read gives ``full_read``."""

    def __init__(self, listing=(0, LISTING, ""), full_read=(0, "", "")):
        self.answers = {"--list": listing, "--file": full_read}
        self.ran = []

    def tool(self, name):
        return name

    def run(self, argv, data=None):
        self.ran.append(argv)
        return self.answers[argv[1]]


def write_backup(tmp_path, content=b"PGDMP fake dump", row_counts=None):
    paths = BackupPaths(str(tmp_path), "pre", "custom")
    with open(paths.dump, "wb") as handle:
        handle.write(content)
    digest = hashlib.sha256(content).hexdigest()
    with open(paths.checksum, "w") as handle:
        handle.write(f"{digest}  pre.dump\n")
    with open(paths.meta, "w") as handle:
        json.dump({"label": "pre", "sha256": digest, "row_counts": row_counts or {"services": 1, "routes": 2}}, handle)
    return paths


def test_a_good_backup_is_listed_and_read_in_full(tmp_path):
    pg = FakePg()
    meta = Backup(pg, write_backup(tmp_path)).verify()
    assert meta["checksum"] == meta["sha256"]
    assert [argv[1] for argv in pg.ran] == ["--list", "--file"]


def test_a_changed_dump_fails_its_checksum(tmp_path):
    paths = write_backup(tmp_path)
    with open(paths.dump, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(BackupError, match="does not match its checksum"):
        Backup(FakePg(), paths).verify()


def test_a_table_missing_from_the_archive_is_reported(tmp_path):
    paths = write_backup(tmp_path, row_counts={"services": 1, "consumers": 3})
    with pytest.raises(BackupError, match="no data for tables consumers"):
        Backup(FakePg(), paths).verify()


def test_a_dump_whose_data_cannot_be_read_is_damaged(tmp_path):
    pg = FakePg(full_read=(1, "", "pg_restore: error: could not read from input file: end of file\n"))
    with pytest.raises(BackupError, match="cannot read every data block.*end of file"):
        Backup(pg, write_backup(tmp_path)).verify()


def test_a_restore_trusts_a_checksum_that_matches_the_verified_one_without_a_second_full_read(tmp_path):
    pg = FakePg(full_read=(1, "", "a full read would fail"))
    backup = Backup(pg, write_backup(tmp_path))
    meta = backup.verify(full_read=False)
    assert meta["checksum"] == meta["sha256"]
    assert [argv[1] for argv in pg.ran] == ["--list"]
    assert backup._listing == LISTING, "the restore reuses the listing it checked"


def test_a_dump_whose_checksum_file_was_rewritten_still_differs_from_its_metadata(tmp_path):
    paths = write_backup(tmp_path)
    content = b"PGDMP another dump"
    with open(paths.dump, "wb") as handle:
        handle.write(content)
    with open(paths.checksum, "w") as handle:
        handle.write(f"{hashlib.sha256(content).hexdigest()}  pre.dump\n")
    with pytest.raises(BackupError, match="does not match the checksum in its metadata"):
        Backup(FakePg(), paths).verify(full_read=False)
