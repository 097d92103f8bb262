# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The smoke requests a module sends to a Kong node's proxy (kong_smoke_test, kong_service)."""

from __future__ import annotations


class ModuleDocFragment:
    """Smoke requests to one node's proxy, each judged by its status code."""

    DOCUMENTATION = r"""
options:
  smoke_requests:
    description:
      - The smoke requests sent to the node's proxy, directly (not through the load balancer), one after the other.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The path, with its query string.
        type: str
        required: true
      method:
        description: The HTTP method.
        type: str
        default: GET
      host:
        description: Sent as the C(Host) header (the route's host).
        type: str
      headers:
        description: More request headers.
        type: dict
        default: {}
      status:
        description: The status codes that pass (redirects are not followed).
        type: list
        elements: int
        default: [200]
"""
