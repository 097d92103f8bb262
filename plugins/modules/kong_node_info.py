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
  - Changes nothing.
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
  - kongops.upgrade.admin_api
options:
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
      description: The node's id.
      type: str
    hostname:
      description: The node's host name.
      type: str
    data_planes:
      description: For a control plane, its data planes (C(/clustering/data-planes)).
      type: list
      elements: dict
      sample: [{"id": "7b0...", "version": "3.9.1", "sync_status": "normal", "config_hash": "a1b2...", "last_seen": 1763780000}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._admin_api import (
    ADMIN_API_ARGSPEC,
    AdminApiError,
    from_params,
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
    }
    status_doc = admin.get_json("/status")
    if isinstance(status_doc.get("database"), dict):
        node["database_reachable"] = bool(status_doc["database"].get("reachable"))
    node["configuration_hash"] = status_doc.get("configuration_hash")
    if status is not None and (parsed is None or parsed.minor_line >= (3, 3)):
        response = status.request("GET", "/status/ready")
        if response.status == 404:
            node["ready_message"] = "no /status/ready on this version"
        else:
            node["ready"] = response.status == 200
            body = response.json()
            node["ready_message"] = body.get("message") if isinstance(body, dict) else None
    if role == "control_plane":
        node["data_planes"] = admin.paged("/clustering/data-planes")
    return node


def main():
    argument_spec = dict(ADMIN_API_ARGSPEC)
    argument_spec.update(
        kong_executable=dict(type="path"),
        expected_version=dict(type="str"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    admin, status = from_params(module.params)
    try:
        node = gather(admin, status)
    except AdminApiError as exc:
        module.fail_json(msg="cannot read the Kong node at %s: %s. Check admin_url, that the node runs, and "
                             "admin_token if the Admin API is protected" % (module.params["admin_url"], exc))
    if module.params["kong_executable"]:
        try:
            node["cli_version"] = str(KongCli(module, module.params["kong_executable"]).version())
        except KongCliError as exc:
            module.fail_json(msg=str(exc), node=node)
    expected = module.params["expected_version"]
    if expected:
        try:
            want = KongVersion.parse(expected)
            have = KongVersion.parse(node["version"])
        except VersionError as exc:
            module.fail_json(msg=str(exc), node=node)
        if (want.major, want.minor, want.patch) != (have.major, have.minor, have.patch):
            module.fail_json(msg="the node at %s runs Kong %s, expected %s; fix the inventory's kong_version or "
                                 "the node" % (module.params["admin_url"], node["version"], expected), node=node)
        if node.get("cli_version") and KongVersion.parse(node["cli_version"]).key[:3] != want.key[:3]:
            module.fail_json(msg="%s is Kong %s, expected %s" % (module.params["kong_executable"], node["cli_version"],
                                                                 expected), node=node)
    module.exit_json(changed=False, node=node)


if __name__ == "__main__":
    main()
