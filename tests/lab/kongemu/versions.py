"""Version catalog of the emulated Kong releases (kong-facts 3.4, 6, 8).

Every fact here comes from ../shared/reference/kong-facts.md. The catalog is
computed for any OSS release from 2.8.0 to 3.10.x: the 2.8.0 baseline plus the
migrations each later release added.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Migration:
    """One migration of one subsystem. ``teardown`` means `up` leaves it pending."""

    name: str
    teardown: bool = False


# (subsystem, name, has_teardown) for the 2.8.0 baseline (kong-facts 3.4, corrected against
# real Kong: `postgres.teardown` of each migration module of 2.8.5, 3.4.2 and 3.9.x, and the
# schema_meta rows their bootstrap, up and finish write; DIFFERENCES.md).
_BASELINE_28: list[tuple[str, str, bool]] = [
    ("core", "000_base", False),
    ("core", "003_100_to_110", False),
    ("core", "004_110_to_120", False),
    ("core", "005_120_to_130", True),
    ("core", "006_130_to_140", False),
    ("core", "007_140_to_150", False),
    ("core", "008_150_to_200", True),
    ("core", "009_200_to_210", True),
    ("core", "010_210_to_211", False),
    ("core", "011_212_to_213", False),
    ("core", "012_213_to_220", True),
    ("core", "013_220_to_230", False),
    ("core", "014_230_to_270", False),
    ("core", "015_270_to_280", False),
    ("acl", "000_base_acl", False),
    ("acl", "002_130_to_140", False),
    ("acl", "003_200_to_210", True),
    ("acl", "004_212_to_213", True),
    ("acme", "000_base_acme", False),
    ("basic-auth", "000_base_basic_auth", False),
    ("basic-auth", "002_130_to_140", False),
    ("basic-auth", "003_200_to_210", True),
    ("bot-detection", "001_200_to_210", True),
    ("hmac-auth", "000_base_hmac_auth", False),
    ("hmac-auth", "002_130_to_140", False),
    ("hmac-auth", "003_200_to_210", True),
    ("ip-restriction", "001_200_to_210", True),
    ("jwt", "000_base_jwt", False),
    ("jwt", "002_130_to_140", False),
    ("jwt", "003_200_to_210", True),
    ("key-auth", "000_base_key_auth", False),
    ("key-auth", "002_130_to_140", False),
    ("key-auth", "003_200_to_210", True),
    ("oauth2", "000_base_oauth2", False),
    ("oauth2", "003_130_to_140", False),
    ("oauth2", "004_200_to_210", True),
    ("oauth2", "005_210_to_211", False),
    ("rate-limiting", "000_base_rate_limiting", False),
    ("rate-limiting", "003_10_to_112", False),
    ("rate-limiting", "004_200_to_210", False),
    ("response-ratelimiting", "000_base_response_rate_limiting", False),
    ("session", "000_base_session", False),
    ("session", "001_add_ttl_index", False),
]

# Release (major, minor, patch) -> migrations it added (kong-facts 3.4 table).
_ADDED: list[tuple[tuple[int, int, int], list[tuple[str, str, bool]]]] = [
    ((3, 0, 0), [
        ("core", "016_280_to_300", True),
        ("acme", "001_280_to_300", False),
        ("http-log", "001_280_to_300", True),
        ("post-function", "001_280_to_300", True),
        ("pre-function", "001_280_to_300", True),
    ]),
    ((3, 1, 0), [("core", "017_300_to_310", False)]),
    ((3, 2, 0), [("core", "018_310_to_320", False)]),
    ((3, 3, 0), [
        ("core", "019_320_to_330", False),
        ("acme", "002_320_to_330", False),
        ("key-auth", "004_320_to_330", False),
        ("oauth2", "006_320_to_330", False),
        ("oauth2", "007_320_to_330", False),
        ("rate-limiting", "005_320_to_330", False),
        ("session", "002_320_to_330", False),
    ]),
    ((3, 4, 0), [("core", "020_330_to_340", False)]),
    ((3, 5, 0), [("core", "021_340_to_350", False)]),
    ((3, 6, 0), [
        ("core", "022_350_to_360", False),
        ("acme", "003_350_to_360", False),
        ("rate-limiting", "006_350_to_360", False),
        ("response-ratelimiting", "001_350_to_360", False),
    ]),
    ((3, 6, 1), [("opentelemetry", "001_331_to_332", True)]),
    ((3, 7, 0), [
        ("core", "023_360_to_370", False),
        ("ai-proxy", "001_360_to_370", True),
    ]),
    ((3, 9, 0), [("core", "024_380_to_390", False)]),
    ((3, 10, 0), [
        ("core", "025_390_to_3100", False),
        ("session", "003_330_to_3100", False),
    ]),
]

# In 3.7.0 the three 3.6 plugin migrations gained a teardown (kong-facts 3.4).
_TEARDOWN_FROM_370 = {
    ("acme", "003_350_to_360"),
    ("rate-limiting", "006_350_to_360"),
    ("response-ratelimiting", "001_350_to_360"),
}

# The release lines that exist (newest patch we accept per minor).
_RELEASED_MINORS = {
    (2, 8): 5, (3, 0): 1, (3, 1): 1, (3, 2): 2, (3, 3): 1, (3, 4): 3, (3, 5): 0,
    (3, 6): 1, (3, 7): 1, (3, 8): 1, (3, 9): 3, (3, 10): 0,
}

# The versions the lab installs by default (issue 2).
EMULATED_VERSIONS = [
    "2.8.0", "2.8.4", "3.4.0", "3.4.3", "3.6.0", "3.6.1", "3.8.0", "3.9.1", "3.10.0",
]

# Bundled plugins (`GET /` plugins.available_on_server), read from real 2.8.5, 3.4.2, 3.9.0
# and 3.9.1 nodes; the release that added each later plugin is from Kong's changelogs.
_BUNDLED_28 = [
    "acl", "acme", "aws-lambda", "azure-functions", "basic-auth", "bot-detection", "correlation-id",
    "cors", "datadog", "file-log", "grpc-gateway", "grpc-web", "hmac-auth", "http-log",
    "ip-restriction", "jwt", "key-auth", "ldap-auth", "loggly", "oauth2", "post-function",
    "pre-function", "prometheus", "proxy-cache", "rate-limiting", "request-size-limiting",
    "request-termination", "request-transformer", "response-ratelimiting", "response-transformer",
    "session", "statsd", "syslog", "tcp-log", "udp-log", "zipkin",
]
_BUNDLED_ADDED: list[tuple[tuple[int, int, int], list[str]]] = [
    ((3, 0, 0), ["opentelemetry"]),
    ((3, 6, 0), ["ai-prompt-decorator", "ai-prompt-guard", "ai-prompt-template", "ai-proxy",
                 "ai-request-transformer", "ai-response-transformer"]),
    ((3, 8, 0), ["standard-webhooks"]),
    ((3, 9, 0), ["redirect"]),
]

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


class UnknownVersion(ValueError):
    """The version is not one the emulator can behave as."""


@dataclass(frozen=True)
class VersionInfo:
    """What one emulated Kong release knows and how it behaves."""

    version: str
    major: int
    minor: int
    patch: int
    subsystems: dict[str, list[Migration]] = field(hash=False)
    bundled_plugins: list[str] = field(hash=False)

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        return self.key >= (major, minor, patch)

    @property
    def has_migrations_status(self) -> bool:
        return self.at_least(3, 0)

    @property
    def has_ready(self) -> bool:
        return self.at_least(3, 3)

    @property
    def has_drain(self) -> bool:
        return self.at_least(3, 9)

    @property
    def has_edition(self) -> bool:
        return self.at_least(3, 6)

    @property
    def has_cassandra(self) -> bool:
        return not self.at_least(3, 4)

    @property
    def has_nginx_conf_flags(self) -> bool:
        return self.at_least(3, 5)

    @property
    def has_sockets_dir(self) -> bool:
        return self.at_least(3, 8)

    @property
    def status_listen_default(self) -> str:
        return "127.0.0.1:8007" if self.at_least(3, 6) else "off"

    @property
    def via_includes_protocol(self) -> bool:
        return self.at_least(3, 8)

    @property
    def core_cache_channel(self) -> str:
        """The cluster_events channel of the core cache (router, plugins iterator): its own
        from 3.7 (Kong/kong#12321; real 3.9.1 vs 3.4.2), `invalidations` before. The other
        cache (consumers, credentials) stays on `invalidations`."""
        return "invalidations_kong_core_db_cache" if self.at_least(3, 7) else "invalidations"

    @property
    def declarative_format(self) -> str:
        return "3.0" if self.major >= 3 else "2.1"

    @property
    def accepted_declarative_formats(self) -> list[str]:
        return ["1.1", "2.1", "3.0"] if self.major >= 3 else ["1.1", "2.1"]

    @property
    def dbless_status_has_database(self) -> bool:
        return not self.at_least(3, 4)

    @property
    def db_timeout_default(self) -> int | None:
        """`--db-timeout` default: 60 up to 3.6, unset (pg_timeout) from 3.7."""
        return None if self.at_least(3, 7) else 60

    @property
    def headers_default(self) -> str:
        if self.at_least(3, 5):
            return "server_tokens, latency_tokens, x-kong-request-id"
        return "server_tokens, latency_tokens"

    @property
    def reset_prompt(self) -> str:
        choices = "[Y/n]" if self.major < 3 else "[y/n]"
        return f"> Are you sure? This operation is irreversible. {choices} "

    @property
    def plugin_subsystems(self) -> list[str]:
        return [s for s in self.subsystems if s != "core"]

    def all_migrations(self) -> list[tuple[str, Migration]]:
        return [(sub, m) for sub, ms in self.subsystems.items() for m in ms]

    def knows(self, subsystem: str, name: str) -> bool:
        return any(m.name == name for m in self.subsystems.get(subsystem, []))


def parse(version: str) -> tuple[int, int, int]:
    match = _VERSION_RE.match(version.strip())
    if not match:
        raise UnknownVersion(f"not a Kong OSS version (X.Y.Z): {version!r}")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3)))


def get(version: str) -> VersionInfo:
    """Return the catalog entry for ``version`` (2.8.0 to 3.10.x)."""
    major, minor, patch = parse(version)
    newest_patch = _RELEASED_MINORS.get((major, minor))
    if newest_patch is None or patch > newest_patch:
        raise UnknownVersion(
            f"Kong {version} is not a release the emulator knows "
            f"(2.8.0 to 3.10.0; minors: "
            f"{', '.join(f'{a}.{b}' for a, b in sorted(_RELEASED_MINORS))})"
        )
    key = (major, minor, patch)
    rows = list(_BASELINE_28)
    for release, added in _ADDED:
        if key >= release:
            rows.extend(added)
    subsystems: dict[str, list[Migration]] = {}
    for sub, name, teardown in rows:
        if (sub, name) in _TEARDOWN_FROM_370 and key >= (3, 7, 0):
            teardown = True
        subsystems.setdefault(sub, []).append(Migration(name, teardown))
    ordered = {"core": subsystems.pop("core")}
    for sub in sorted(subsystems):
        ordered[sub] = subsystems[sub]
    bundled = set(_BUNDLED_28)
    for release, names in _BUNDLED_ADDED:
        if key >= release:
            bundled.update(names)
    missing = set(ordered) - {"core"} - bundled
    if missing:  # every subsystem with migrations is a bundled plugin
        raise AssertionError(f"catalog error: {sorted(missing)} have migrations but are not bundled")
    return VersionInfo(
        version=f"{major}.{minor}.{patch}",
        major=major,
        minor=minor,
        patch=patch,
        subsystems=ordered,
        bundled_plugins=sorted(bundled),
    )
