# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by modules that run the `kong` executable of a node."""

from __future__ import annotations


class ModuleDocFragment:
    """How a module finds and runs one node's `kong` CLI."""

    DOCUMENTATION = r"""
options:
  kong_executable:
    description:
      - Path of the C(kong) executable of the Kong version to use.
      - For an upgrade this is the binary of the version doing the work, usually Y.
    type: path
    default: kong
  conf:
    description:
      - Path of the node's C(kong.conf), passed to the CLI as C(-c).
      - When omitted, Kong looks for C(/etc/kong/kong.conf), then C(/etc/kong.conf).
    type: path
  prefix:
    description:
      - Kong prefix directory, passed to the CLI as C(-p).
    type: path
  environment:
    description:
      - Extra C(KONG_*) environment variables for the CLI (they override C(kong.conf)).
      - Values are passed in the process environment, never on a command line. Values of settings whose name
        says they are secret (C(pg_password), anything with C(password), C(secret), C(token) or C(_key)) are
        masked wherever Ansible shows the module's arguments; prefer O(pg_password) for the database password.
      - C(KONG_*) variables of the module's own environment (with a local connection, the controller's, such as
        E(KONG_ADMIN_TOKEN)) are not passed to the CLI, because Kong writes every C(KONG_*) variable it gets into
        C(<prefix>/.kong_env). Give node settings in C(kong.conf) or in this option.
    type: dict
    default: {}
  pg_password:
    description:
      - PostgreSQL password for the CLI, passed as C(KONG_PG_PASSWORD) in its environment.
      - When omitted, the password in C(kong.conf) or the environment of the play is used.
      - If not set, the value of the E(KONG_PG_PASSWORD) environment variable on the managed node is used.
    type: str
  db_timeout:
    description:
      - Timeout in seconds for each database operation (C(--db-timeout)).
      - When omitted, Kong's own default applies (60 up to 3.6, C(pg_timeout) from 3.7).
    type: int
  lock_timeout:
    description:
      - Seconds a node waits for another node's migrations, and the lifetime of the lock row
        it takes (C(--lock-timeout)).
    type: int
    default: 60
"""
