#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kong_upgrade_plan
short_description: Check an upgrade path and strategy against Kong's documented rules
version_added: 1.0.0
description:
  - Classifies the upgrade from O(x_version) to O(y_version) (patch, adjacent minor, adjacent LTS, major, unsupported,
    downgrade, or unknown when a line is later than 3.14, the newest these rules know) as Kong documents it, says which
    strategies are allowed for the deployment O(mode), and names the
    intermediate release lines when the path is not direct.
  - Fails, before anything changes, when the path or the strategy is not allowed, unless an override is set, in which
    case it warns loudly.
  - Pure computation; runs anywhere, usually on the control node.
author:
  - kongops.upgrade maintainers (@kongops)
extends_documentation_fragment:
  - kongops.upgrade.attributes
options:
  x_version:
    description: The version running now (OSS C(X.Y.Z) or Enterprise C(X.Y.Z.W)).
    type: str
    required: true
  y_version:
    description: The version to upgrade to.
    type: str
    required: true
  strategy:
    description: The strategy to check; omit to only classify the path.
    type: str
    choices: [dual_cluster, in_place, blue_green, rolling]
  mode:
    description: What is upgraded; rolling applies only to DB-less nodes and hybrid data planes.
    type: str
    choices: [traditional, dbless, control_plane, data_plane]
    default: traditional
  cp_version:
    description:
      - With O(mode=data_plane), the version of the hybrid control plane. Both X and Y data planes must be accepted
        by it during the upgrade (same major, data plane minor not newer than the control plane's, kong-facts 9.1);
        otherwise the module fails before anything changes and says to upgrade the control plane first.
    type: str
  allow_unsupported_path:
    description: Go on, with a warning, on a path Kong does not guarantee (never past a downgrade).
    type: bool
    default: false
  allow_unsupported_strategy:
    description: Go on, with a warning, with a strategy Kong does not document for this path (for example blue-green
      across minor versions).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details:
      - The module only computes.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Check the path before anything changes
  kongops.upgrade.kong_upgrade_plan:
    x_version: 3.4.3
    y_version: 3.10.0
    strategy: dual_cluster
  register: plan
"""

RETURN = r"""
path:
  description:
    - The classification of the path, with C(from) and C(to) (the versions as parsed), C(kind) (C(none), C(patch),
      C(minor), C(major), C(lts), C(unsupported), C(downgrade) or C(unknown)), C(supported), C(reason) (a sentence
      for the operator) and C(steps) (the release lines to go through when the path is not supported, else empty).
  returned: always
  type: dict
  sample: {"from": "3.4.2", "to": "3.10.0", "kind": "lts", "supported": true, "reason": "adjacent LTS upgrade 3.4 -> 3.10",
           "steps": []}
strategies:
  description: For each strategy, whether it is allowed for this path and mode, and why.
  returned: always
  type: dict
  sample: {"dual_cluster": {"allowed": true, "reason": "..."}}
recommended_strategy:
  description: The strategy Kong recommends among the allowed ones.
  returned: always
  type: str
  sample: dual_cluster
hybrid:
  description: With O(cp_version), whether the control plane accepts X's and Y's data planes, and why.
  returned: when O(cp_version) is given
  type: dict
  sample: {"cp_version": "3.10.0", "x": {"accepted": true, "reason": "..."}, "y": {"accepted": true, "reason": "..."}}
warnings_given:
  description: The overrides that were used.
  returned: always
  type: list
  elements: str
  sample:
    - "UNSUPPORTED STRATEGY, going on because it was allowed: blue-green is documented only between patch versions of one release
      line; 3.9.1 -> 3.10.0 crosses lines. Use dual_cluster (recommended) or in_place"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kongops.upgrade.plugins.module_utils._version_rules import (
    STRATEGIES,
    VersionError,
    classify_path,
    hybrid_compatible,
    strategy_allowed,
)

PREFERENCE = ("dual_cluster", "rolling", "in_place", "blue_green")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            x_version=dict(type="str", required=True),
            y_version=dict(type="str", required=True),
            strategy=dict(type="str", choices=list(STRATEGIES)),
            mode=dict(type="str", choices=["traditional", "dbless", "control_plane", "data_plane"], default="traditional"),
            cp_version=dict(type="str"),
            allow_unsupported_path=dict(type="bool", default=False),
            allow_unsupported_strategy=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        path = classify_path(p["x_version"], p["y_version"])
        strategies = {}
        for name in STRATEGIES:
            allowed, reason = strategy_allowed(name, p["x_version"], p["y_version"], p["mode"])
            strategies[name] = {"allowed": allowed, "reason": reason}
        hybrid = None
        if p["cp_version"]:
            hybrid = {"cp_version": p["cp_version"]}
            for side in ("x", "y"):
                accepted, reason = hybrid_compatible(p["cp_version"], p["%s_version" % side])
                hybrid[side] = {"accepted": accepted, "reason": reason}
    except VersionError as exc:
        module.fail_json(msg=str(exc))
    recommended = next((s for s in PREFERENCE if strategies[s]["allowed"]), None)
    result = {"changed": False, "path": path, "strategies": strategies, "recommended_strategy": recommended,
              "warnings_given": []}
    if hybrid is not None:
        result["hybrid"] = hybrid
        rejected = [hybrid[side]["reason"] for side in ("x", "y") if not hybrid[side]["accepted"]]
        if rejected:
            module.fail_json(msg="The control plane would reject data planes of this upgrade: %s. Nothing was "
                                 "changed. Upgrade the control plane first (dual_cluster or in_place, mode "
                                 "control_plane) to a version whose major is the data planes' and whose minor is at "
                                 "least %s's, then upgrade the data planes" % ("; ".join(rejected), p["y_version"]),
                             **result)
    if path["kind"] == "downgrade":
        module.fail_json(msg=path["reason"], **result)
    if not path["supported"]:
        if not p["allow_unsupported_path"]:
            module.fail_json(msg="%s. Nothing was changed. To go on anyway (not recommended), set "
                                 "allow_unsupported_path (kong_upgrade_allow_unsupported_path)" % path["reason"], **result)
        text = "UNSUPPORTED UPGRADE PATH, going on because it was allowed: %s" % path["reason"]
        module.warn(text)
        result["warnings_given"].append(text)
    strategy = p["strategy"]
    if strategy and not strategies[strategy]["allowed"]:
        reason = strategies[strategy]["reason"]
        stateless_mismatch = ("rolling" in reason and "only" in reason) or "no database" in reason
        if stateless_mismatch or not p["allow_unsupported_strategy"]:
            module.fail_json(msg="%s. Nothing was changed.%s" % (
                reason, "" if stateless_mismatch else " To go on anyway (not recommended), set "
                "allow_unsupported_strategy (kong_upgrade_allow_unsupported_blue_green)"), **result)
        text = "UNSUPPORTED STRATEGY, going on because it was allowed: %s" % reason
        module.warn(text)
        result["warnings_given"].append(text)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
