# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by modules that talk to a node's Admin API and Status API."""

from __future__ import annotations


class ModuleDocFragment:
    """Connection to one Kong node's Admin API (and optionally its status listener)."""

    DOCUMENTATION = r"""
options:
  admin_url:
    description:
      - Base URL of the node's Admin API, for example C(http://127.0.0.1:8001).
      - If not set, the value of the E(KONG_ADMIN_URL) environment variable is used.
    type: str
    required: true
  admin_token:
    description:
      - Value of the C(Kong-Admin-Token) header, for Admin APIs protected by RBAC (Enterprise).
      - If not set, the value of the E(KONG_ADMIN_TOKEN) environment variable is used.
    type: str
  status_url:
    description:
      - Base URL of the node's status listener (C(status_listen)), for example C(http://127.0.0.1:8007).
      - Needed for readiness (C(/status/ready), Kong 3.3+).
      - If not set, the value of the E(KONG_STATUS_URL) environment variable is used.
    type: str
  validate_certs:
    description:
      - Verify TLS certificates of HTTPS URLs.
    type: bool
    default: true
  ca_path:
    description:
      - A CA bundle for HTTPS URLs.
    type: path
  timeout:
    description:
      - Seconds to wait for each HTTP response.
    type: float
    default: 10
"""
