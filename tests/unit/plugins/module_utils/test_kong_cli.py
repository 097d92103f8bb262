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
