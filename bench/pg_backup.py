"""Benchmark: pg_backup's backup and restore against raw pg_dump / createdb + pg_restore of the same
database, side by side in one lab, interleaved round by round. Prints median seconds and ratios,
never a pass/fail on wall-clock time.

    .venv/bin/python bench/pg_backup.py [--size-mb 80] [--rounds 3] [--kong real|emulated]

Brings up its own lab (tests/lab/lab up with one X node; honours KONG_LAB_NET and KONG_LAB_RUN_DIR),
grows the Kong database to --size-mb with the rate-limiting plugin's cluster counters (what makes
a busy gateway's database large) on top of a seeded configuration, and takes it down afterwards.

Four cases per round, each on the same database:
- raw dump: ``pg_dump -Fc -f <file>``;
- pg_backup state=present, in process (the module's own code, ``Backup.take`` and its checks,
  without Ansible's start-up) and through Ansible (``ansible localhost -m kongops.upgrade.pg_backup``);
- raw restore: ``createdb`` + ``pg_restore --no-owner --exit-on-error -d``;
- pg_backup state=restored, in process and through Ansible.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab" / "tests"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from ansible_runner import collections_path, run_module  # noqa: E402  (tests/integration)
from labfixtures import running_lab  # noqa: E402  (tests/lab/tests)

sys.path.insert(0, str(collections_path()))

from ansible_collections.kongops.upgrade.plugins.module_utils import _backup, _pg  # noqa: E402
from ansible_collections.kongops.upgrade.plugins.modules import pg_backup  # noqa: E402


class ModuleShim:
    """What the module's code asks of AnsibleModule, without Ansible: run_command, get_bin_path,
    warn, check_mode and params (for running pg_backup's own functions in this process)."""

    def __init__(self, params: dict) -> None:
        self.params = params
        self.check_mode = False
        self.warnings: list[str] = []

    def run_command(self, argv, environ_update=None, data=None, binary_data=False):
        env = dict(os.environ)
        env.update(environ_update or {})
        proc = subprocess.run(argv, input=data, capture_output=True, env=env, check=False,
                              text=not binary_data)
        return proc.returncode, proc.stdout, proc.stderr

    @staticmethod
    def get_bin_path(name):
        return shutil.which(name)

    def warn(self, text):
        self.warnings.append(text)


def pg_env(lab_vars: dict, passfile: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PGHOST=str(lab_vars["kong_pg_host"]), PGPORT=str(lab_vars["kong_pg_port"]),
               PGUSER=str(lab_vars["kong_pg_user"]), PGDATABASE=str(lab_vars["kong_pg_database"]),
               PGPASSFILE=str(passfile))
    return env


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run(argv: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")


def psql(sql: str, env: dict[str, str], database: str | None = None) -> str:
    argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]
    if database:
        argv += ["-d", database]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"psql failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def grow(env: dict[str, str], size_mb: int) -> int:
    """Add rate-limiting counters until the database is at least ``size_mb``; returns its size."""
    batch = 100000
    offset = 0
    while True:
        size = int(psql("SELECT pg_database_size(current_database())", env))
        if size >= size_mb * 1024 * 1024:
            return size
        psql("INSERT INTO ratelimiting_metrics (identifier, period, period_date, value, ttl) "
             f"SELECT md5(g::text), 'second', "
             f"now() - g * interval '1 second', g % 97, now() + interval '1 day' "
             f"FROM generate_series({offset + 1}, {offset + batch}) g", env)
        offset += batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=80, help="database size to reach (default 80 MB)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement (default 3)")
    parser.add_argument("--kong", choices=["real", "emulated"], default="real",
                        help="the lab's Kong that bootstraps the database (default real)")
    args = parser.parse_args()
    with running_lab("--x-nodes", "1", "--y-nodes", "1", "--x-version", "3.9.1", "--y-version", "3.9.1",
                     "--seed-size", "2000", kong=args.kong) as lab, tempfile.TemporaryDirectory() as tmp:
        lab_vars = lab.group_vars
        password = str(lab_vars["kong_pg_password"])
        passfile = Path(tmp) / "pgpass"
        passfile.write_text(f"*:*:*:{lab_vars['kong_pg_user']}:{password}\n", encoding="utf-8")
        passfile.chmod(0o600)
        env = pg_env(lab_vars, passfile)
        size = grow(env, args.size_mb)
        pg_params = {"pg_host": lab_vars["kong_pg_host"], "pg_port": int(lab_vars["kong_pg_port"]),
                     "pg_user": lab_vars["kong_pg_user"], "pg_password": password,
                     "pg_database": lab_vars["kong_pg_database"], "pg_sslmode": "prefer", "pg_bin_dir": None}
        backups = Path(tmp) / "backups"
        samples: dict[str, list[float]] = {}

        def note(case: str, seconds: float) -> None:
            samples.setdefault(case, []).append(seconds)

        def in_process(ensure, label: str, state: str, target: str | None = None) -> dict:
            """pg_backup's own ``ensure`` function for ``state``, as the module runs it, without Ansible."""
            params = {**pg_params, "state": state, "backup_dir": str(backups), "label": label,
                      "format": "custom", "jobs": 1, "compress": None, "force": False, "check_space": True,
                      "fingerprint": None, "target_database": target, "replace_restored": False}
            shim = ModuleShim(params)
            result: dict = {}
            with _pg.PgClient.from_params(shim) as client:
                ensure(shim, _backup.Backup(client, _backup.BackupPaths(str(backups), label, "custom")), result)
            return result

        def module_present(label: str) -> dict:
            result = in_process(pg_backup.ensure_present, label, "present")
            assert result["verified"] and not result["reused"], result
            return result

        def module_restored(label: str, target: str) -> dict:
            result = in_process(pg_backup.ensure_restored, label, "restored", target)
            assert result["changed"] and result["restored_row_counts"], result
            return result

        def drop(database: str) -> None:
            psql(f'DROP DATABASE IF EXISTS "{database}"', env, database="postgres")

        module_present("warm-up")  # the first dump reads the tables from disk into the cache
        dump_size = (backups / "warm-up.dump").stat().st_size

        def raw_restore(database: str, dump: Path) -> None:
            run(["createdb", database], env)
            run(["pg_restore", "--no-owner", "--exit-on-error", "-d", database, str(dump)], env)

        for n in range(args.rounds):  # interleaved, so drift on a noisy machine hits every case alike
            raw_file = Path(tmp) / f"raw-{n}.dump"
            ansible_args = {**{k: v for k, v in pg_params.items() if v is not None}, "backup_dir": str(backups),
                            "label": f"ansible-{n}"}
            restored = {**ansible_args, "state": "restored", "target_database": f"ansible_{n}"}
            note("dump: pg_dump -Fc", timed(run, ["pg_dump", "-Fc", "-f", str(raw_file)], env))
            note("dump: pg_backup (module code)", timed(module_present, f"inproc-{n}"))
            note("dump: pg_backup (through Ansible)", timed(run_module, "pg_backup", ansible_args))
            note("restore: createdb + pg_restore", timed(raw_restore, f"raw_{n}", raw_file))
            note("restore: pg_backup (module code)", timed(module_restored, f"inproc-{n}", f"inproc_{n}"))
            note("restore: pg_backup (through Ansible)", timed(run_module, "pg_backup", restored))
            for database in (f"raw_{n}", f"inproc_{n}", f"ansible_{n}"):
                drop(database)
            raw_file.unlink()
    median = {case: statistics.median(values) for case, values in samples.items()}
    print(f"pg_backup against raw pg_dump / pg_restore: database {size / 1048576:.0f} MB "
          f"(custom-format dump {dump_size / 1048576:.0f} MB), median of {args.rounds} rounds, seconds:")
    for case, seconds in median.items():
        print(f"  {case:40}{seconds:8.2f}")
    dump, restore = median["dump: pg_dump -Fc"], median["restore: createdb + pg_restore"]
    print(f"backup:  module code / pg_dump = {median['dump: pg_backup (module code)'] / dump:.2f} "
          f"(target <= 1.3); through Ansible / pg_dump = {median['dump: pg_backup (through Ansible)'] / dump:.2f}")
    print(f"restore: module code / createdb + pg_restore = {median['restore: pg_backup (module code)'] / restore:.2f} "
          f"(target <= 1.2); through Ansible = {median['restore: pg_backup (through Ansible)'] / restore:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
