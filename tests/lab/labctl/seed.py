r"""Seed configuration: a declarative file in the shape ``kong config db_export`` writes.

Flat top-level entity lists, foreign keys as plain ids, ids fixed (uuid5) so the same
size always gives the same file. Made of "units"; unit ``i`` has:

* service ``svc<i>`` -> the echo service,
* route ``svc<i>-path`` (``paths: [/svc<i>]``) and route ``svc<i>-host``
  (``hosts: [svc<i>.lab]``),
* consumer ``consumer<i>`` with key-auth credential ``lab-key-<i>``,
* every 5th unit: a ``key-auth`` plugin on route ``svc<i>-path``,
* units 1, 11, 21, ...: upstream ``up<i>.lab`` with one target (the echo service), and
  service ``svc<i>`` goes through it (its host is the upstream's name) with a
  ``rate-limiting`` plugin (``policy: local``, a limit the lab never reaches),
* units 2, 12, 22, ...: a regex route ``svc<i>-regex`` (``/regex<i>/\d+``; in format 3.0
  written ``~/regex<i>/\d+``, as 3.x wants regex paths) with a ``request-transformer``
  plugin that adds ``x-lab-route: svc<i>-regex`` to the upstream request, so a test can
  tell the regex route served (the echo service echoes request headers) rather than the
  root route ``/``, which would answer 200 too. 3.0's migration ``016_280_to_300``
  rewrites 2.x regex paths to ``~...``: a 2.8 -> 3.x upgrade must keep them routing.

Plus service ``echo`` with route ``root`` (``paths: [/]``), so a plain ``GET /`` on
the frontend works without a key. Every entity is tagged ``lab-seed``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAMESPACE = uuid.UUID("0b4f3b4e-6c1e-4e4b-9a51-6c61622d7365")
TAGS = ["lab-seed"]
PER_UNIT = 5.8  # entities per unit on average (see module doc)
KEYED_EVERY = 5
UPSTREAM_EVERY = 10
REGEX_EVERY = 10
ROUTE_HEADER = "x-lab-route"
KEY_NAME = "apikey"


def _id(kind: str, name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{kind}:{name}"))


def units_for(size: int) -> int:
    """Number of units so that the total is close to ``size`` (at least 5 units)."""
    return max(5, round((max(size, 2) - 2) / PER_UNIT))


@dataclass
class Seed:
    """A generated configuration and what the load generator can send through it."""

    config: dict[str, Any]
    units: int
    counts: dict[str, int] = field(default_factory=dict)
    load_targets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def write(self, path: Path) -> None:
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            yaml.dump(self.config, fh, Dumper=dumper, sort_keys=False, default_flow_style=False)


def generate(size: int, format_version: str, echo_host: str, echo_port: int) -> Seed:
    """Build the seed for about ``size`` entities in declarative ``format_version``."""
    n = units_for(size)
    services: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    consumers: list[dict[str, Any]] = []
    credentials: list[dict[str, Any]] = []
    plugins: list[dict[str, Any]] = []
    upstreams: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []

    def service(name: str, host: str | None = None) -> str:
        sid = _id("service", name)
        services.append(
            {
                "id": sid,
                "name": name,
                "protocol": "http",
                "host": host or echo_host,
                "port": echo_port,
                "connect_timeout": 5000,
                "read_timeout": 30000,
                "write_timeout": 30000,
                "retries": 5,
                "tags": TAGS,
            }
        )
        return sid

    def route(name: str, sid: str, paths: list[str] | None = None,
              hosts: list[str] | None = None) -> str:
        rid = _id("route", name)
        body: dict[str, Any] = {
            "id": rid,
            "name": name,
            "service": sid,
            "protocols": ["http", "https"],
            "strip_path": True,
            "preserve_host": False,
            "tags": TAGS,
        }
        if paths:
            body["paths"] = paths
        if hosts:
            body["hosts"] = hosts
        routes.append(body)
        return rid

    echo_sid = service("echo")
    route("root", echo_sid, paths=["/"])

    keyed: list[int] = []
    regex_units: list[int] = []
    regex_prefix = "~" if int(format_version.split(".")[0]) >= 3 else ""
    for i in range(1, n + 1):
        upstream = (i - 1) % UPSTREAM_EVERY == 0
        sid = service(f"svc{i}", host=f"up{i}.lab" if upstream else None)
        path_rid = route(f"svc{i}-path", sid, paths=[f"/svc{i}"])
        route(f"svc{i}-host", sid, hosts=[f"svc{i}.lab"])
        cid = _id("consumer", f"consumer{i}")
        consumers.append({"id": cid, "username": f"consumer{i}", "tags": TAGS})
        credentials.append(
            {"id": _id("keyauth_credential", f"consumer{i}"), "consumer": cid,
             "key": f"lab-key-{i}", "tags": TAGS}
        )
        if i % KEYED_EVERY == 0:
            keyed.append(i)
            plugins.append(
                {
                    "id": _id("plugin", f"key-auth-svc{i}-path"),
                    "name": "key-auth",
                    "route": path_rid,
                    "enabled": True,
                    "protocols": ["grpc", "grpcs", "http", "https"],
                    "config": {"key_names": [KEY_NAME], "hide_credentials": False,
                               "key_in_header": True, "key_in_query": True,
                               "key_in_body": False, "anonymous": None,
                               "run_on_preflight": True},
                    "tags": TAGS,
                }
            )
        if upstream:
            uid = _id("upstream", f"up{i}.lab")
            upstreams.append({"id": uid, "name": f"up{i}.lab", "algorithm": "round-robin",
                              "slots": 10000, "tags": TAGS})
            targets.append({"id": _id("target", f"up{i}.lab"), "upstream": uid,
                            "target": f"{echo_host}:{echo_port}", "weight": 100, "tags": TAGS})
            plugins.append({"id": _id("plugin", f"rate-limiting-svc{i}"), "name": "rate-limiting",
                            "service": sid, "enabled": True, "protocols": ["grpc", "grpcs", "http", "https"],
                            "config": {"minute": 1_000_000, "policy": "local"}, "tags": TAGS})
        if (i - 2) % REGEX_EVERY == 0:
            regex_units.append(i)
            regex_rid = route(f"svc{i}-regex", sid, paths=[f"{regex_prefix}/regex{i}/\\d+$"])
            plugins.append({"id": _id("plugin", f"request-transformer-svc{i}-regex"), "name": "request-transformer",
                            "route": regex_rid, "enabled": True, "protocols": ["grpc", "grpcs", "http", "https"],
                            "config": {"add": {"headers": [f"{ROUTE_HEADER}:svc{i}-regex"]}}, "tags": TAGS})

    config: dict[str, Any] = {"_format_version": format_version, "_transform": False}
    for key, items in (
        ("services", services),
        ("routes", routes),
        ("consumers", consumers),
        ("keyauth_credentials", credentials),
        ("plugins", plugins),
        ("upstreams", upstreams),
        ("targets", targets),
    ):
        if items:
            config[key] = items
    counts = {
        "services": len(services),
        "routes": len(routes),
        "consumers": len(consumers),
        "keyauth_credentials": len(credentials),
        "plugins": len(plugins),
        "upstreams": len(upstreams),
        "targets": len(targets),
    }
    load_targets: list[dict[str, Any]] = [
        {"name": "root", "path": "/", "headers": {}},
        {"name": "svc1-path", "path": "/svc1/anything", "headers": {}},
        {"name": "svc2-host", "path": "/hello", "headers": {"Host": "svc2.lab"}},
    ]
    if regex_units:
        r = regex_units[0]
        load_targets.append({"name": f"svc{r}-regex", "path": f"/regex{r}/42", "headers": {}})
    if keyed:
        k = keyed[0]
        load_targets.append(
            {"name": f"svc{k}-path-keyauth", "path": f"/svc{k}/private",
             "headers": {KEY_NAME: f"lab-key-{k}"}}
        )
    return Seed(config=config, units=n, counts=counts, load_targets=load_targets)
