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
