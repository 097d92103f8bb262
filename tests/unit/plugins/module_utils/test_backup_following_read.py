"""Unit tests for the full read that follows a custom-format dump while it is written
(_backup._FollowingRead), with scripted stand-ins for pg_dump and pg_restore (real processes, no
PostgreSQL): what the reader is fed is what pg_dump would have written to a pipe, whatever the
timing, and a reader or writer that stops early never hangs the take."""

import subprocess
import sys
import textwrap

import pytest

from ansible_collections.kongops.upgrade.plugins.module_utils._backup import _FollowingRead

# Like pg_dump -Fc into a file: header and table of contents with offsets not yet known, the data
# in pieces over time, then back to the start to fill in the offsets (same size), and exit.
WRITER = textwrap.dedent("""\
    import sys, time
    path, pieces = sys.argv[1], int(sys.argv[2])
    with open(path, "wb") as out:
        out.write(b"PGDMP-TOC-OFFSETS:????|")
        out.flush()
        for n in range(pieces):
            out.write(("data-%04d;" % n).encode() * 5000)
            out.flush()
            time.sleep(0.005)
        out.seek(len(b"PGDMP-TOC-OFFSETS:"))
        out.write(b"1234")
    sys.exit(int(sys.argv[3]))
    """)

# Like `pg_restore --file /dev/null` reading standard input: keeps what it read; with a limit, stops
# early with a message, as pg_restore does at a block it cannot read.
READER = textwrap.dedent("""\
    import sys
    seen, limit = sys.argv[1], int(sys.argv[2])
    data = sys.stdin.buffer.read(limit) if limit else sys.stdin.buffer.read()
    with open(seen, "wb") as out:
        out.write(data)
    if limit:
        sys.stderr.write("pg_restore: error: could not read block\\n")
        sys.exit(1)
    """)


class ScriptedPg:
    """spawn() runs the scripted tools; pg_restore's arguments name where it keeps what it read."""

    def __init__(self, tmp_path, reader_limit=0):
        self.tmp_path = tmp_path
        self.reader_limit = reader_limit
        (tmp_path / "reader.py").write_text(READER)

    def tool(self, name):
        return name

    def private_path(self, name):
        return str(self.tmp_path / name)

    def spawn(self, argv, stdin=None, stdout=None, stderr=None):
        assert argv[0] == "pg_restore" and argv[1:] == ["--file", "/dev/null"], argv
        return subprocess.Popen([sys.executable, str(self.tmp_path / "reader.py"), str(self.tmp_path / "seen"),
                                 str(self.reader_limit)], stdin=stdin, stdout=stdout, stderr=stderr)


def start_writer(tmp_path, pieces=40, rc=0):
    (tmp_path / "writer.py").write_text(WRITER)
    return subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(tmp_path / "dump.partial"),
                             str(pieces), str(rc)])


def test_the_read_gets_every_byte_as_written_before_the_offsets_are_filled_in(tmp_path):
    pg = ScriptedPg(tmp_path)
    writer = start_writer(tmp_path)
    following = _FollowingRead(pg, str(tmp_path / "dump.partial"), writer)
    writer.wait()
    assert following.finish() == (0, "")
    final = (tmp_path / "dump.partial").read_bytes()
    seen = (tmp_path / "seen").read_bytes()
    assert final.startswith(b"PGDMP-TOC-OFFSETS:1234|") and len(final) > 40 * 50000
    assert seen == final.replace(b"OFFSETS:1234|", b"OFFSETS:????|", 1)


def test_a_reader_that_stops_early_is_reported_and_the_dump_still_ends(tmp_path):
    pg = ScriptedPg(tmp_path, reader_limit=1000)
    writer = start_writer(tmp_path)
    following = _FollowingRead(pg, str(tmp_path / "dump.partial"), writer)
    assert writer.wait(timeout=60) == 0
    rc, message = following.finish()
    assert rc == 1 and "could not read block" in message


@pytest.mark.parametrize("pieces", [0, 40])
def test_a_failed_dump_ends_the_read(tmp_path, pieces):
    pg = ScriptedPg(tmp_path)
    writer = start_writer(tmp_path, pieces=pieces, rc=1)
    following = _FollowingRead(pg, str(tmp_path / "dump.partial"), writer)
    assert writer.wait(timeout=60) == 1
    rc, _message = following.finish()
    assert rc == 0 and (tmp_path / "seen").exists()


def test_a_dump_that_never_writes_its_file_ends_the_read(tmp_path):
    pg = ScriptedPg(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(2)"])
    following = _FollowingRead(pg, str(tmp_path / "never-written"), writer)
    assert writer.wait(timeout=60) == 2
    rc, _message = following.finish()
    assert (tmp_path / "seen").read_bytes() == b"" and rc == 0


def test_finish_stops_a_dump_that_still_runs(tmp_path):
    pg = ScriptedPg(tmp_path)
    writer = start_writer(tmp_path, pieces=100000)
    following = _FollowingRead(pg, str(tmp_path / "dump.partial"), writer)
    following.finish()
    assert writer.poll() is not None and writer.returncode != 0
