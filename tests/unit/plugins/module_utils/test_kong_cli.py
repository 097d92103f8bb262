"""Unit tests for the kong CLI runner's handling of secrets."""

from ansible_collections.kongops.upgrade.plugins.module_utils._kong_cli import KongCli, is_secret_setting


class FakeModule:
    def __init__(self, params):
        self.params = params
        self.no_log_values = set()

    @staticmethod
    def get_bin_path(name):
        return "/usr/local/bin/" + name


def test_secret_settings_are_recognised_by_name():
    for name in ("pg_password", "KONG_PG_PASSWORD", "pg_ro_password", "admin_gui_session_secret", "cluster_cert_key"):
        assert is_secret_setting(name), name
    for name in ("pg_database", "pg_host", "KONG_PROXY_LISTEN", "log_level"):
        assert not is_secret_setting(name), name


def test_secrets_in_environment_are_masked_and_passed_in_the_environment():
    module = FakeModule({"kong_executable": "kong", "conf": None, "prefix": None, "pg_password": None,
                         "db_timeout": None, "lock_timeout": 60,
                         "environment": {"pg_password": "s3cret", "pg_database": "kong_y"}})
    cli = KongCli.from_params(module)
    assert module.no_log_values == {"s3cret"}
    assert cli.environment == {"KONG_PG_PASSWORD": "s3cret", "KONG_PG_DATABASE": "kong_y"}
    assert "s3cret" not in " ".join(cli.argv(["migrations", "list"], db_options=True))


def test_error_log_problems_name_what_killed_the_workers():
    from ansible_collections.kongops.upgrade.plugins.module_utils._kong_cli import error_log_problems

    # What real Kong 3.9.1 logged when its worker (user nobody) could not enter nginx_main_working_directory,
    # while `kong start` printed "Kong started" and exited 0.
    text = (
        '2026/12/02 00:50:41 [notice] 29920#29920: start worker process 29921\n'
        '2026/12/02 00:50:41 [alert] 29921#29921: chdir("/tmp/h2/locked") failed (13: Permission denied)\n'
        '2026/12/02 00:50:42 [notice] 29920#29920: worker process 29921 exited with code 2\n'
        '2026/12/02 00:50:42 [alert] 29920#29920: worker process 29921 exited with fatal code 2 and cannot be respawned\n'
    )
    lines, fatal = error_log_problems(text)
    assert fatal
    assert lines == ['[alert] 29921#29921: chdir("/tmp/h2/locked") failed (13: Permission denied)',
                     "[alert] 29920#29920: worker process 29921 exited with fatal code 2 and cannot be respawned"]
    # [error] lines are given only when nothing worse was logged, and are not fatal by themselves.
    lines, fatal = error_log_problems("2026/12/02 [error] 1#0: *3 [lua] init.lua:1: database unreachable\n"
                                      "2026/12/02 [notice] 1#0: ok\n")
    assert lines == ["[error] 1#0: *3 [lua] init.lua:1: database unreachable"] and not fatal
    assert error_log_problems("") == ([], False)


def test_error_log_path_follows_proxy_error_log():
    from ansible_collections.kongops.upgrade.plugins.module_utils._kong_cli import error_log_path

    assert error_log_path({}, "/usr/local/kong") == "/usr/local/kong/logs/error.log"
    assert error_log_path({"proxy_error_log": "/var/log/kong/error.log"}, "/p") == "/var/log/kong/error.log"
    assert error_log_path({"proxy_error_log": "syslog:server=127.0.0.1"}, "/p") is None
    assert error_log_path({"proxy_error_log": "/dev/stderr"}, "/p") is None
    assert error_log_path({}, None) is None


def test_the_callers_kong_variables_do_not_reach_the_cli(monkeypatch, tmp_path):
    # Kong writes every KONG_* variable of its environment into <prefix>/.kong_env; the module's
    # environment is the caller's (the controller's, with a local connection).
    import os

    seen = {}

    class RunModule(FakeModule):
        def run_command(self, argv, environ_update=None, check_rc=False):
            seen.update(os.environ)
            seen.update(environ_update or {})
            return 0, "", ""

    monkeypatch.setenv("KONG_ADMIN_TOKEN", "controller-token")
    monkeypatch.setenv("KONG_PROXY_LISTEN", "0.0.0.0:1")
    monkeypatch.setenv("PATH_MARKER", "kept")
    kong = tmp_path / "kong"
    kong.write_text("#!/bin/sh\n")
    kong.chmod(0o755)
    cli = KongCli(RunModule({}), str(kong), environment={"pg_database": "kong_y"}, pg_password="pw")
    cli.run(["start"])
    assert "KONG_ADMIN_TOKEN" not in seen and "KONG_PROXY_LISTEN" not in seen
    assert seen["KONG_PG_DATABASE"] == "kong_y" and seen["KONG_PG_PASSWORD"] == "pw" and seen["PATH_MARKER"] == "kept"
    assert os.environ["KONG_ADMIN_TOKEN"] == "controller-token", "the module's own environment is put back"
