"""Hybrid mode (kong-facts 9, 6.4): control plane outlet and data plane sync.

Transport (a documented simplification of Kong's mTLS WebSocket): the control plane
serves plain HTTP on `cluster_listen`:

    GET /v1/outlet?node_id=&node_hostname=&node_version=&config_hash=

* The CP checks the DP version exactly as kong-facts 9.1 (major.minor only). On a
  rejection it logs `[clustering] <message> [id: ..., host: ..., ip: ..., version:
  ...]`, upserts the DP in `clustering_data_planes` with `sync_status =
  kong_version_incompatible` and answers 400 `{"message": "<message>"}`.
* The DP also sends `plugins=<the plugins it loads>`: when the CP's configuration uses a
  plugin the DP lacks, the CP logs `unable to send updated configuration to data plane:
  configured <name> plugin <version> is missing from data plane`, lists the DP as
  `plugin_set_incompatible` and sends it nothing (it keeps its configuration).
* On acceptance it upserts the DP row (id, ip, hostname, version, sync_status
  `normal`, config_hash reported by the DP, last_seen, ttl) and answers 200
  `{"config_hash": H, "config": {...}}`; `config` is left out when the DP already
  has H. When the DP has H the CP holds the request (long poll) up to ~1 s for a
  change, so a change reaches DPs within about a second of the CP seeing it.
* The DP polls continuously (about once a second) instead of Kong's 30 s ping;
  `last_seen` is refreshed at most every 5 s per DP (Kong: every 30 s ping).

The DP keeps the last configuration on disk in `<prefix>/config.cache.json.gz`
(Kong keeps it in the prefix too) and loads it at start, so it serves from cache
when its CP is down, also after a restart. After a failure it logs
`[clustering] connection to control plane <uri> broken: <err> (retrying after N
seconds)` and retries after 5-10 s (random), as Kong does.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from . import versions
from .httpserver import Request, Response

if TYPE_CHECKING:  # pragma: no cover
    from .node import Node

JSON = "application/json; charset=utf-8"
CACHE_FILE = "config.cache.json.gz"
POLL_INTERVAL = 1.0
LONG_POLL = 1.0
ROW_REFRESH = 5.0


def _json(status: int, payload: Any) -> Response:
    return Response(status, [("Content-Type", JSON)],
                    json.dumps(payload, separators=(",", ":")).encode())


def check_version(cp: versions.VersionInfo, dp_version: str) -> tuple[bool, str | None]:
    """kong-facts 9.1: (accepted, message). Message is the error or the info note."""
    try:
        dp_major, dp_minor, _patch = versions.parse(dp_version.split("-")[0])
    except versions.UnknownVersion:
        return False, (f"data plane version {dp_version} is incompatible with control plane "
                       f"version {cp.version} ({cp.major}.x.y are accepted)")
    if dp_major != cp.major:
        return False, (f"data plane version {dp_version} is incompatible with control plane "
                       f"version {cp.version} ({cp.major}.x.y are accepted)")
    if dp_minor > cp.minor:
        return False, (f"data plane version {dp_version} is incompatible with older control "
                       f"plane version {cp.version}")
    if dp_minor < cp.minor:
        return True, (f"data plane minor version {dp_version} is different to control plane "
                      f"minor version {cp.version}")
    return True, None


# ============================================================================ control plane
class ControlPlane:
    """The `cluster_listen` handler of a control plane node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._cond = threading.Condition()
        self._export: tuple[str, dict[str, Any]] | None = None
        self._generation = 0
        self._rows: dict[str, tuple[float, tuple[Any, ...]]] = {}
        self._row_lock = threading.Lock()
        self._status: dict[str, str] = {}

    def start(self) -> None:
        """Nothing to run in the background: the refresh loop calls config_changed."""

    def config_changed(self) -> None:
        with self._cond:
            self._export = None
            self._generation += 1
            self._cond.notify_all()

    def current(self) -> tuple[str, dict[str, Any]]:
        """(hash, declarative export) of the CP's current configuration."""
        with self._cond:
            if self._export is not None:
                return self._export
        from . import declarative  # pylint: disable=import-outside-toplevel

        entities = self.node.backend.call("export")
        chash = declarative.config_hash(entities)
        document = declarative.export_document(entities, self.node.version_info)
        with self._cond:
            self._export = (chash, document)
        return chash, document

    def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        if path not in ("/v1/outlet", "/v2/outlet") or request.method != "GET":
            return _json(404, {"message": "Not found"})
        query = {k: v[0] for k, v in parse_qs(request.raw_query).items() if v}
        dp_id = query.get("node_id", "")
        hostname = query.get("node_hostname", "")
        dp_version = query.get("node_version", "")
        dp_hash = query.get("config_hash") or None
        ip = request.client_addr[0]
        try:
            uuid.UUID(dp_id)
        except ValueError:
            return _json(400, {"message": "'node_id' argument is required and must be a UUID"})
        if not hostname or not dp_version:
            return _json(400, {"message": "'node_hostname' and 'node_version' arguments are "
                                          "required"})
        accepted, note = check_version(self.node.version_info, dp_version)
        suffix = f" [id: {dp_id}, host: {hostname}, ip: {ip}, version: {dp_version}]"
        if not accepted:
            self.node.log.error(f"[clustering] {note}{suffix}")
            self._upsert(dp_id, ip, hostname, dp_version, "kong_version_incompatible", dp_hash)
            return _json(400, {"message": note})
        if note and dp_id not in self._rows:
            self.node.log.info(f"[clustering] {note}{suffix}")
        if self.node.config_error is not None:
            return _json(500, {"message": "An unexpected error occurred"})
        try:
            chash, export = self.current()
        except Exception as exc:  # pylint: disable=broad-except
            self.node.log.error(f"[clustering] unable to export the configuration: {exc}"
                                f"{suffix}")
            return _json(500, {"message": "An unexpected error occurred"})
        if dp_hash == chash:
            with self._cond:
                generation = self._generation
                self._cond.wait_for(lambda: self._generation != generation, LONG_POLL)
            chash, export = self.current()
        if dp_hash != chash and "plugins" in query:
            problem = self._missing_plugin(export, set(query["plugins"].split(",")) - {""})
            if problem is not None:
                # the DP stays connected and keeps its configuration (compat/init.lua)
                if self._status.get(dp_id) != "plugin_set_incompatible":
                    self.node.log.warn(f"[clustering] unable to send updated configuration to data plane: "
                                       f"{problem}{suffix}")
                self._status[dp_id] = "plugin_set_incompatible"
                self._upsert(dp_id, ip, hostname, dp_version, "plugin_set_incompatible", dp_hash)
                return _json(200, {"config_hash": dp_hash})
        self._status[dp_id] = "normal"
        self._upsert(dp_id, ip, hostname, dp_version, "normal", dp_hash)
        if dp_hash == chash:
            return _json(200, {"config_hash": chash})
        return _json(200, {"config_hash": chash, "config": export})

    def _missing_plugin(self, export: dict[str, Any], dp_plugins: set[str]) -> str | None:
        """check_configuration_compatibility: a configured plugin the DP does not load
        (sync_status plugin_set_incompatible). plugin_version_incompatible (another plugin
        major, or a newer DP plugin minor) cannot happen with bundled plugins: every one
        carries its Kong version, and a DP minor newer than the CP's is refused earlier."""
        configured = {str(p.get("name")) for p in export.get("plugins") or [] if isinstance(p, dict)}
        for name in sorted(configured - dp_plugins):
            return f"configured {name} plugin {self.node.version_info.version} is missing from data plane"
        return None

    def _upsert(self, dp_id: str, ip: str, hostname: str, version: str, sync_status: str,
                config_hash: str | None) -> None:
        key = (ip, hostname, version, sync_status, config_hash)
        now = time.monotonic()
        with self._row_lock:
            last = self._rows.get(dp_id)
            if last is not None and last[1] == key and now - last[0] < ROW_REFRESH:
                return
            self._rows[dp_id] = (now, key)
        row = {
            "id": dp_id, "ip": ip, "hostname": hostname, "version": version,
            "sync_status": sync_status,
            "config_hash": config_hash or "0" * 32,
            "last_seen": int(time.time()),
            "ttl": self.node.conf.get_int("cluster_data_plane_purge_delay", 1209600),
        }
        try:
            upsert_data_plane(self.node, row)
        except Exception as exc:  # pylint: disable=broad-except
            with self._row_lock:
                self._rows.pop(dp_id, None)
            self.node.log.error(f"[clustering] unable to update clustering data plane status: "
                                f"{exc}")


def upsert_data_plane(node: Node, row: dict[str, Any]) -> None:
    """Write one `clustering_data_planes` row (through schema.py when it offers it)."""
    row = dict(row)
    purge_delay = int(row.pop("ttl", 1209600))
    node.backend.call("upsert_data_plane", row, purge_delay=purge_delay)


# ============================================================================ data plane
class DataPlane:
    """The sync loop of a data plane node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.stop = node.stop_event
        self.cache_path = os.path.join(node.prefix, CACHE_FILE)
        self.connected = False
        self._thread: threading.Thread | None = None

    @property
    def control_plane(self) -> str:
        return (self.node.conf.get("cluster_control_plane") or "127.0.0.1:8005").strip()

    def uri(self) -> str:
        query = urlencode({"node_id": self.node.node_id,
                           "node_hostname": self.node.hostname,
                           "node_version": self.node.version_info.version})
        return f"wss://{self.control_plane}/v1/outlet?{query}"

    def load_cache(self) -> None:
        """At start: an empty router, then the cached configuration if there is one."""
        from . import declarative  # pylint: disable=import-outside-toplevel
        from . import node as nodemod  # pylint: disable=import-outside-toplevel

        node = self.node
        node.install_store(nodemod.dbless_empty(declarative, node.version_info))
        # the empty configuration: /status/ready says `empty configuration present` (real
        # 3.4.2 and 3.9.1 data planes before their first configuration)
        node.config_hash = "0" * 32
        try:
            with gzip.open(self.cache_path, "rt", encoding="utf-8") as handle:
                cached = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            node.log.warn(f"[clustering] unable to read the cached configuration "
                          f"{self.cache_path}: {exc}")
            return
        try:
            self._install(cached["config"], cached["config_hash"])
            node.log.notice(f"[clustering] loaded the cached configuration "
                            f"(hash {cached['config_hash']})")
        except Exception as exc:  # pylint: disable=broad-except
            node.log.warn(f"[clustering] the cached configuration is unusable: {exc}")
        del nodemod

    def _install(self, config: dict[str, Any], chash: str) -> None:
        from . import declarative  # pylint: disable=import-outside-toplevel
        from . import node as nodemod  # pylint: disable=import-outside-toplevel

        store = nodemod.dbless_load_doc(declarative, config, self.node.version_info)
        self.node.install_store(store)
        self.node.config_hash = chash

    def _save_cache(self, config: dict[str, Any], chash: str) -> None:
        tmp = self.cache_path + ".tmp"
        with gzip.open(tmp, "wt", encoding="utf-8") as handle:
            json.dump({"config_hash": chash, "config": config}, handle)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.cache_path)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dp-sync", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self._poll_once()
                if not self.connected:
                    self.node.log.notice(f"[clustering] connected to control plane "
                                         f"{self.control_plane}")
                self.connected = True
                self.stop.wait(POLL_INTERVAL)
            except Exception as exc:  # pylint: disable=broad-except
                self.connected = False
                wait = random.randint(5, 10)
                self.node.log.error(f"[clustering] connection to control plane {self.uri()} "
                                    f"broken: {_describe(exc)} (retrying after {wait} seconds)")
                self.stop.wait(wait)

    def _poll_once(self) -> None:
        host, _sep, port = self.control_plane.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        from .migrations import loaded_plugins  # pylint: disable=import-outside-toplevel

        query = urlencode({"node_id": self.node.node_id,
                           "node_hostname": self.node.hostname,
                           "node_version": self.node.version_info.version,
                           "config_hash": self.node.config_hash or "",
                           "plugins": ",".join(loaded_plugins(self.node.version_info, self.node.conf))})
        conn = http.client.HTTPConnection(host, int(port or 8005), timeout=10)
        try:
            conn.request("GET", f"/v1/outlet?{query}")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        try:
            payload = json.loads(body or b"{}")
        except ValueError as exc:
            raise SyncError(f"invalid answer from the control plane (HTTP {resp.status})") \
                from exc
        if resp.status != 200:
            raise SyncError(str(payload.get("message") or f"HTTP {resp.status}"))
        chash = payload.get("config_hash")
        config = payload.get("config")
        if config is not None and chash and chash != self.node.config_hash:
            self._install(config, chash)
            self._save_cache(config, chash)
            self.node.log.notice(f"[clustering] received updated configuration from "
                                 f"control plane (hash {chash})")


class SyncError(Exception):
    """The control plane refused or failed the sync."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "failed to connect: connection refused"
    if isinstance(exc, TimeoutError):
        return "failed to connect: timeout"
    if isinstance(exc, OSError):
        return f"failed to connect: {exc.strerror or exc}"
    return str(exc) or exc.__class__.__name__
