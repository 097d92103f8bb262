"""Every setting name of Kong's kong_defaults.lua at 2.8.5, 3.4.2, 3.9.0 and 3.9.1 (their union).

Kong takes a ``KONG_<NAME>`` environment variable only when ``<name>`` is one of its settings or
starts with a dynamic-directive prefix (``nginx_http_``, ...; conf_loader/constants.lua
``DYNAMIC_KEY_NAMESPACES``): any other ``KONG_*`` variable (``KONG_ADMIN_TOKEN``, say) is
ignored and never reaches ``<prefix>/.kong_env``. Extracted from the release sources
(``^name = `` lines of kong/templates/kong_defaults.lua).
"""

from __future__ import annotations

SETTINGS: frozenset[str] = frozenset((
    "_debug_pg_ttl_cleanup_interval", "admin_access_log", "admin_error_log", "admin_gui_access_log",
    "admin_gui_api_url", "admin_gui_error_log", "admin_gui_listen", "admin_gui_origin", "admin_gui_path",
    "admin_gui_ssl_cert", "admin_gui_ssl_cert_key", "admin_listen", "admin_ssl_cert", "admin_ssl_cert_key",
    "allow_debug_header", "anonymous_reports", "cassandra_consistency", "cassandra_contact_points",
    "cassandra_data_centers", "cassandra_keyspace", "cassandra_lb_policy", "cassandra_local_datacenter",
    "cassandra_password", "cassandra_port", "cassandra_read_consistency", "cassandra_refresh_frequency",
    "cassandra_repl_factor", "cassandra_repl_strategy", "cassandra_schema_consensus_timeout", "cassandra_ssl",
    "cassandra_ssl_verify", "cassandra_timeout", "cassandra_username", "cassandra_write_consistency",
    "client_body_buffer_size", "client_max_body_size", "client_ssl", "client_ssl_cert", "client_ssl_cert_key",
    "cluster_ca_cert", "cluster_cert", "cluster_cert_key", "cluster_cjson", "cluster_control_plane",
    "cluster_data_plane_purge_delay", "cluster_dp_labels", "cluster_incremental_sync", "cluster_listen",
    "cluster_max_payload", "cluster_mtls", "cluster_ocsp", "cluster_rpc", "cluster_server_name",
    "cluster_use_proxy", "database", "db_cache_neg_ttl", "db_cache_ttl", "db_cache_warmup_entities",
    "db_resurrect_ttl", "db_update_frequency", "db_update_propagation", "declarative_config",
    "declarative_config_string", "dedicated_config_processing", "dns_cache_size", "dns_error_ttl", "dns_hostsfile",
    "dns_no_sync", "dns_not_found_ttl", "dns_order", "dns_resolver", "dns_stale_ttl", "dns_valid_ttl",
    "error_default_type", "error_template_html", "error_template_json", "error_template_plain",
    "error_template_xml", "go_plugins_dir", "go_pluginserver_exe", "headers", "headers_upstream", "host_ports",
    "kic", "lmdb_environment_path", "lmdb_map_size", "log_level", "lua_max_post_args", "lua_max_req_headers",
    "lua_max_resp_headers", "lua_max_uri_args", "lua_package_cpath", "lua_package_path", "lua_socket_pool_size",
    "lua_ssl_protocols", "lua_ssl_trusted_certificate", "lua_ssl_verify_depth", "mem_cache_size", "new_dns_client",
    "nginx_admin_client_body_buffer_size", "nginx_admin_client_max_body_size", "nginx_daemon",
    "nginx_events_multi_accept", "nginx_events_worker_connections", "nginx_http_charset",
    "nginx_http_client_body_buffer_size", "nginx_http_client_max_body_size", "nginx_http_grpc_ssl_conf_command",
    "nginx_http_keepalive_requests", "nginx_http_lua_regex_cache_max_entries", "nginx_http_lua_regex_match_limit",
    "nginx_http_lua_ssl_conf_command", "nginx_http_proxy_ssl_conf_command", "nginx_http_ssl_conf_command",
    "nginx_http_ssl_dhparam", "nginx_http_ssl_prefer_server_ciphers", "nginx_http_ssl_protocols",
    "nginx_http_ssl_session_tickets", "nginx_http_ssl_session_timeout", "nginx_http_upstream_keepalive",
    "nginx_http_upstream_keepalive_requests", "nginx_http_upstream_keepalive_timeout", "nginx_main_daemon",
    "nginx_main_user", "nginx_main_worker_processes", "nginx_main_worker_rlimit_nofile", "nginx_optimizations",
    "nginx_proxy_real_ip_header", "nginx_proxy_real_ip_recursive", "nginx_stream_lua_ssl_conf_command",
    "nginx_stream_proxy_ssl_conf_command", "nginx_stream_ssl_conf_command", "nginx_stream_ssl_dhparam",
    "nginx_stream_ssl_prefer_server_ciphers", "nginx_stream_ssl_protocols", "nginx_stream_ssl_session_tickets",
    "nginx_stream_ssl_session_timeout", "nginx_upstream_keepalive", "nginx_upstream_keepalive_requests",
    "nginx_upstream_keepalive_timeout", "nginx_user", "nginx_worker_processes", "node_id", "opentelemetry_tracing",
    "opentelemetry_tracing_sampling_rate", "pg_backlog", "pg_database", "pg_host", "pg_keepalive_timeout",
    "pg_max_concurrent_queries", "pg_password", "pg_pool_size", "pg_port", "pg_ro_backlog", "pg_ro_database",
    "pg_ro_host", "pg_ro_keepalive_timeout", "pg_ro_max_concurrent_queries", "pg_ro_password", "pg_ro_pool_size",
    "pg_ro_port", "pg_ro_schema", "pg_ro_semaphore_timeout", "pg_ro_ssl", "pg_ro_ssl_verify", "pg_ro_timeout",
    "pg_ro_user", "pg_schema", "pg_semaphore_timeout", "pg_ssl", "pg_ssl_verify", "pg_timeout", "pg_user",
    "plugins", "pluginserver_names", "port_maps", "prefix", "privileged_agent", "proxy_access_log",
    "proxy_error_log", "proxy_listen", "proxy_server", "proxy_server_ssl_verify", "proxy_stream_access_log",
    "proxy_stream_error_log", "real_ip_header", "real_ip_recursive", "request_debug", "resolver_address",
    "resolver_error_ttl", "resolver_family", "resolver_hosts_file", "resolver_lru_cache_size",
    "resolver_mem_cache_size", "resolver_stale_ttl", "resolver_valid_ttl", "role", "router_flavor", "ssl_cert",
    "ssl_cert_key", "ssl_cipher_suite", "ssl_ciphers", "ssl_dhparam", "ssl_prefer_server_ciphers", "ssl_protocols",
    "ssl_session_cache_size", "ssl_session_tickets", "ssl_session_timeout", "status_access_log",
    "status_error_log", "status_listen", "status_ssl_cert", "status_ssl_cert_key", "stream_listen",
    "tracing_instrumentations", "tracing_sampling_rate", "trusted_ips", "untrusted_lua", "upstream_keepalive",
    "upstream_keepalive_idle_timeout", "upstream_keepalive_max_requests", "upstream_keepalive_pool_size", "vaults",
    "wasm", "wasm_dynamic_module", "wasm_filters", "wasm_filters_path", "worker_consistency",
    "worker_events_max_payload", "worker_state_update_frequency",
))

DYNAMIC_PREFIXES: tuple[str, ...] = (
    "nginx_main_", "nginx_events_", "nginx_http_", "nginx_upstream_", "nginx_proxy_", "nginx_location_",
    "nginx_status_", "nginx_admin_", "nginx_stream_", "nginx_supstream_", "nginx_sproxy_", "nginx_wasm_",
)


def is_setting(name: str) -> bool:
    """Whether Kong reads ``KONG_<NAME>`` from the environment for this (lower-case) setting name."""
    return name in SETTINGS or name.startswith(DYNAMIC_PREFIXES)
