# -*- coding: utf-8 -*-
# Copyright: kongops.upgrade contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which tables of a Kong database hold configuration, and which Kong writes while serving.

Private to the collection. Used by the backup (which counts rows) and the freeze
(which must leave runtime tables writable).
"""

from __future__ import annotations

# Tables Kong itself writes while it serves traffic or runs migrations: never frozen,
# and their row counts are expected to move between a backup and a check.
RUNTIME_TABLES = frozenset({
    "schema_meta",
    "locks",
    "cluster_events",
    "clustering_data_planes",
    "clustering_rpc_requests",
    "clustering_sync_version",
    "clustering_sync_delta",
    "ratelimiting_metrics",
    "response_ratelimiting_metrics",
    "rl_counters",
    "sessions",
    "session_metadatas",
    "oauth2_tokens",
    "oauth2_authorization_codes",
    "acme_storage",
    "parameters",
    "vitals_stats_seconds",
    "vitals_stats_minutes",
    "vitals_node_meta",
    "kongops_freeze",
    "kongops_run_lock",
})


def is_config_table(name):
    """True for tables that hold configuration entities (frozen, fingerprinted, verified)."""
    return name not in RUNTIME_TABLES and not name.startswith("pg_")
