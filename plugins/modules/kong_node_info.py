#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kong_node_info
short_description: Facts about one Kong node for preflight checks and verification
version_added: 1.0.0
description:
  - Reads one Kong node through its Admin API (C(GET /), C(GET /status)), its status listener
    (C(GET /status/ready), Kong 3.3+) and optionally its C(kong) executable (C(kong version)).
  - Returns version, edition, mode and role, database reachability, readiness, the configuration hash
    (DB-less nodes and data planes), and for a control plane its data planes with version, sync status,
    configuration hash and last contact.
  - A hybrid data plane serves no Admin API (Kong renders the Admin API's server only for the C(traditional) and
    C(control_plane) roles, whatever C(admin_listen) says). Such a node is read through its status listener
    (O(status_url)) and its prefix (O(prefix)). The version comes from the C(Server) header of C(GET /status), else
    from O(kong_executable); the role and the database from C(<prefix>/.kong_env), the settings C(kong start)
    resolved; the node id from C(<prefix>/kong.id), where data planes keep it from Kong 3.1 (the id the control
    plane lists).
  - Changes nothing.
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
  - kongops.upgrade.admin_api
options:
  admin_url:
    description:
      - Base URL of the node's Admin API, for example C(http://127.0.0.1:8001).
      - Leave it out for a hybrid data plane (it has no Admin API); O(status_url) and O(prefix) are then needed.
        A data plane's O(admin_url) that refuses connections is read the same way.
      - If not set, the value of the E(KONG_ADMIN_URL) environment variable is used.
    type: str
    required: false
  prefix:
    description:
      - The node's prefix directory, on the host the module runs on. Read only for a data plane without an Admin API
        (its C(.kong_env) and C(kong.id)); only the C(role) and C(database) settings are taken from C(.kong_env).
    type: path
  kong_executable:
    description:
      - Path of the node's C(kong) executable; when given, C(kong version) is compared with the Admin API.
    type: path
  expected_version:
    description:
      - Fail unless the node runs this version (compared on the release number, for example C(3.9.1)).
    type: str
attributes:
  check_mode:
    support: full
    details:
      - The module only reads.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Read facts of every old node
  kongops.upgrade.kong_node_info:
    admin_url: "{{ kong_admin_url }}"
    status_url: "{{ kong_status_url }}"
    expected_version: "{{ kong_version }}"
  register: node

- name: List the data planes of a control plane
  kongops.upgrade.kong_node_info:
    admin_url: http://cp.example.internal:8001
    admin_token: "{{ vault_kong_admin_token }}"
  register: cp
"""

RETURN = r"""
node:
  description: Facts about the node.
  returned: always
  type: dict
  sample: {"version": "3.9.1", "edition": "community", "mode": "traditional", "role": "traditional", "database": "postgres",
           "node_id": "4c2ccc50-fc27-48d2-984c-389739c8ad50", "hostname": "x1", "plugins_enabled": ["key-auth", "rate-limiting"],
           "database_reachable": true, "configuration_hash": null, "ready": true, "ready_message": "ready", "data_planes": [],
           "source": "admin_api"}
  contains:
    version:
      description: Version from the Admin API C(GET /).
      type: str
      sample: 3.9.1
    cli_version:
      description: Version printed by O(kong_executable), when given.
      type: str
      sample: 3.9.1
    edition:
      description: C(community) or C(enterprise) (from the API in 3.6+, else from the version format).
      type: str
      sample: community
    mode:
      description: C(traditional), C(dbless) or C(hybrid).
      type: str
      sample: traditional
    role:
      description: C(traditional), C(control_plane) or C(data_plane).
      type: str
      sample: traditional
    database:
      description: The C(database) setting (C(postgres) or C(off)).
      type: str
      sample: postgres
    database_reachable:
      description: C(database.reachable) of C(GET /status); null on DB-less nodes and data planes from 3.4.
      type: bool
      sample: true
    ready:
      description: Whether C(GET /status/ready) answered 200; null when O(status_url) is not given or the version has no readiness endpoint.
      type: bool
      sample: true
    ready_message:
      description: The message of C(/status/ready).
      type: str
      sample: ready
    configuration_hash:
      description: The loaded configuration's hash, on DB-less nodes and data planes.
      type: str
      sample: 9f5bc1c5c7a2e9a8b2c9c8e1e5f0a1b2
    node_id:
      description: The node's id (a data plane without an Admin API, from C(<prefix>/kong.id); null before Kong 3.1).
      type: str
      sample: 4c2ccc50-fc27-48d2-984c-389739c8ad50
    hostname:
      description: The node's host name (null for a data plane without an Admin API).
      type: str
      sample: x1
    plugins_enabled:
      description: The plugins the node reports enabled in its cluster (empty for a data plane without an Admin API).
      type: list
      elements: str
      sample: ["key-auth", "rate-limiting"]
    source:
      description: Where the facts come from, C(admin_api), or C(status_api) for a data plane without an Admin API.
      type: str
      sample: admin_api
    data_planes:
      description: For a control plane, its data planes (C(/clustering/data-planes)).
      type: list
      elements: dict
      sample: [{"id": "7b0...", "version": "3.9.1", "sync_status": "normal", "config_hash": "a1b2...", "last_seen": 1763780000}]
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._admin_api import (
    ADMIN_API_ARGSPEC,
    AdminApiError,
    KongHttp,
)
from ansible_collections.kongops.upgrade.plugins.module_utils._kong_cli import KongCli, KongCliError
from ansible_collections.kongops.upgrade.plugins.module_utils._version_rules import KongVersion, VersionError


def gather(admin, status):
    root = admin.get_json("/")
    conf = root.get("configuration") or {}
    version = str(root.get("version"))
    role = conf.get("role") or "traditional"
    database = conf.get("database") or "postgres"
    if role in ("control_plane", "data_plane"):
        mode = "hybrid"
    elif database == "off":
        mode = "dbless"
    else:
        mode = "traditional"
    try:
        parsed = KongVersion.parse(version)
    except VersionError:
        parsed = None
    edition = root.get("edition") or ("enterprise" if parsed is not None and parsed.enterprise else "community")
    node = {
        "version": version,
        "edition": edition,
        "mode": mode,
        "role": role,
        "database": database,
        "node_id": root.get("node_id"),
        "hostname": root.get("hostname"),
        "plugins_enabled": (root.get("plugins") or {}).get("enabled_in_cluster") or [],
        "database_reachable": None,
        "configuration_hash": None,
        "ready": None,
        "ready_message": None,
        "data_planes": [],
        "source": "admin_api",
    }
    status_doc = admin.get_json("/status")
    if isinstance(status_doc.get("database"), dict):
        node["database_reachable"] = bool(status_doc["database"].get("reachable"))
    node["configuration_hash"] = status_doc.get("configuration_hash")
    read_ready(node, status, parsed)
    if role == "control_plane":
        node["data_planes"] = admin.paged("/clustering/data-planes")
    return node


def read_ready(node, status, parsed):
    if status is not None and (parsed is None or parsed.minor_line >= (3, 3)):
        response = status.request("GET", "/status/ready")
        if response.status == 404:
            node["ready_message"] = "no /status/ready on this version"
        else:
            node["ready"] = response.status == 200
            body = response.json()
            node["ready_message"] = body.get("message") if isinstance(body, dict) else None


def prefix_settings(prefix):
    """The role and the database of the node whose prefix this is (from ``.kong_env``, which ``kong start``
    writes), or {} when there is none. No other setting is read: the file also holds secrets."""
    wanted = {}
    try:
        with open(os.path.join(prefix, ".kong_env"), encoding="utf-8") as handle:
            for line in handle:
                key, sep, value = line.partition("=")
                if sep and key.strip() in ("role", "database"):
                    wanted[key.strip()] = value.strip()
    except OSError:
        return {}
    return wanted


def prefix_node_id(prefix):
    try:
        with open(os.path.join(prefix, "kong.id"), encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError:
        return None
    return value if re.match(r"^[0-9a-fA-F-]{36}$", value) else None


def gather_data_plane(status, prefix, settings, cli_version):
    """A data plane, through its status listener and its prefix (it serves no Admin API)."""
    response = status.request("GET", "/status", expect=(200,))
    status_doc = response.json() or {}
    server = next((v for k, v in response.headers.items() if k.lower() == "server"), "") or ""
    match = re.search(r"kong/(\S+)", server)
    version = match.group(1) if match else cli_version
    if not version:
        raise AdminApiError("the data plane's status listener %s does not say its version (no Server header: "
                            "headers without server_tokens); give kong_executable" % status.base_url)
    try:
        parsed = KongVersion.parse(version)
    except VersionError:
        parsed = None
    node = {
        "version": version,
        "edition": "enterprise" if parsed is not None and parsed.enterprise else "community",
        "mode": "hybrid",
        "role": "data_plane",
        "database": settings.get("database") or "off",
        "node_id": prefix_node_id(prefix),
        "hostname": None,
        "plugins_enabled": [],
        "database_reachable": None,
        "configuration_hash": status_doc.get("configuration_hash"),
        "ready": None,
        "ready_message": None,
        "data_planes": [],
        "source": "status_api",
    }
    if isinstance(status_doc.get("database"), dict):
        node["database_reachable"] = bool(status_doc["database"].get("reachable"))
    read_ready(node, status, parsed)
    return node


def main():
    argument_spec = dict(ADMIN_API_ARGSPEC)
    argument_spec.update(
        admin_url=dict(ADMIN_API_ARGSPEC["admin_url"], required=False),
        prefix=dict(type="path"),
        kong_executable=dict(type="path"),
        expected_version=dict(type="str"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_one_of=[("admin_url", "status_url")],
                           required_by={"prefix": ("status_url",)})
    params = module.params
    http = dict(validate_certs=params["validate_certs"], ca_path=params.get("ca_path"), timeout=params["timeout"])
    admin = KongHttp(params["admin_url"], params.get("admin_token"), **http) if params["admin_url"] else None
    status = KongHttp(params["status_url"], None, **http) if params.get("status_url") else None
    cli_version = None
    if params["kong_executable"]:
        try:
            cli_version = str(KongCli(module, params["kong_executable"]).version())
        except KongCliError as exc:
            module.fail_json(msg=str(exc))
    settings = prefix_settings(params["prefix"]) if params["prefix"] else {}
    where = params["admin_url"] or params["status_url"]
    try:
        if admin is None:
            node = gather_data_plane(status, params["prefix"] or "", settings, cli_version)
        else:
            try:
                node = gather(admin, status)
            except AdminApiError as exc:
                # A data plane has no Admin API, whatever admin_listen says: read it through its status listener.
                if exc.status is not None or status is None or settings.get("role") != "data_plane":
                    raise
                where = params["status_url"]
                node = gather_data_plane(status, params["prefix"], settings, cli_version)
    except AdminApiError as exc:
        module.fail_json(msg="cannot read the Kong node at %s: %s. Check admin_url (status_url and prefix for a data "
                             "plane), that the node runs, and admin_token if the Admin API is protected" % (where, exc))
    if cli_version:
        node["cli_version"] = cli_version
    expected = module.params["expected_version"]
    if expected:
        try:
            want = KongVersion.parse(expected)
            have = KongVersion.parse(node["version"])
        except VersionError as exc:
            module.fail_json(msg=str(exc), node=node)
        if (want.major, want.minor, want.patch) != (have.major, have.minor, have.patch):
            module.fail_json(msg="the node at %s runs Kong %s, expected %s; fix the inventory's kong_version or "
                                 "the node" % (where, node["version"], expected), node=node)
        if node.get("cli_version") and KongVersion.parse(node["cli_version"]).key[:3] != want.key[:3]:
            module.fail_json(msg="%s is Kong %s, expected %s" % (module.params["kong_executable"], node["cli_version"],
                                                                 expected), node=node)
    module.exit_json(changed=False, node=node)


if __name__ == "__main__":
    main()
