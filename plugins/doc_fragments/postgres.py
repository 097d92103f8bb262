# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by modules that connect to Kong's PostgreSQL database."""

from __future__ import annotations


class ModuleDocFragment:
    """Connection to the PostgreSQL server of a Kong cluster, with Kong's own setting names."""

    DOCUMENTATION = r"""
options:
  pg_host:
    description:
      - PostgreSQL host (Kong's C(pg_host)).
      - If not set, the value of the E(KONG_PG_HOST) or E(PGHOST) environment variable is used.
    type: str
    default: 127.0.0.1
  pg_port:
    description:
      - PostgreSQL port (Kong's C(pg_port)).
      - If not set, the value of the E(KONG_PG_PORT) or E(PGPORT) environment variable is used.
    type: int
    default: 5432
  pg_user:
    description:
      - PostgreSQL user (Kong's C(pg_user)).
      - If not set, the value of the E(KONG_PG_USER) or E(PGUSER) environment variable is used.
    type: str
    default: kong
  pg_password:
    description:
      - PostgreSQL password (Kong's C(pg_password)). Given to the client tools in a private password file, never
        on a command line.
      - If not set, the value of the E(KONG_PG_PASSWORD) or E(PGPASSWORD) environment variable is used.
    type: str
  pg_database:
    description:
      - The Kong database (Kong's C(pg_database)).
      - If not set, the value of the E(KONG_PG_DATABASE) or E(PGDATABASE) environment variable is used.
    type: str
    default: kong
  pg_sslmode:
    description:
      - libpq C(sslmode) for the connection.
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
    default: prefer
  pg_bin_dir:
    description:
      - Directory of C(psql), C(pg_dump) and C(pg_restore), when they are not the ones in E(PATH)
        (for example C(/usr/lib/postgresql/16/bin) to match a newer server).
    type: path
requirements:
  - The PostgreSQL client tools (C(psql), C(pg_dump), C(pg_restore)) on the host that runs the module, of the server's
    major version or newer.
"""
