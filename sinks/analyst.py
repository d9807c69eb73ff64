"""What analysts may read, and the limits every analyst query runs under.

One list for the three places that need it: the SQL guard (embedded mode and
`tally query`), the grants of the server-mode analyst user (`tally migrate`),
and the test that every table a migration creates is either here or private.
"""

from __future__ import annotations

from tally.config import Settings

# Raw tables and views analysts read (docs/analysts.md).
ANALYST_TABLES: frozenset[str] = frozenset({
    "pageviews", "aggregates", "product_events", "drops", "bad_rows", "daily_stats", "daily_stats_log", "breakdowns_daily",
    "site_stats_hourly", "site_stats_daily", "site_stats_monthly", "path_stats_daily",
    "product_family_daily", "active_workspaces_daily", "drops_daily", "bad_rows_unique",
    "api_routes_minutely", "api_routes_daily", "slow_operations_daily", "ticket_volume_daily",
    "login_failures_daily", "timer_usage_daily", "invoice_totals_daily",
    "sessions", "session_stats_hourly", "session_stats_daily", "session_stats_monthly",
    "entry_pages_daily", "exit_pages_daily", "goals",
})
# Parameterized views: called like table functions, `top_pages(site = ..., ...)`.
ANALYST_VIEWS: frozenset[str] = frozenset({
    "top_pages", "top_pages_raw", "top_sources", "top_browsers", "top_operating_systems",
    "top_devices", "adoption_summary", "adoption_by_tenant", "top_countries",
})
# Tables no analyst query may touch: API keys, dashboard accounts and the migration ledgers.
PRIVATE_TABLES: frozenset[str] = frozenset({"api_keys", "dashboard_users", "share_links", "tally_migrations",
                                           "tally_migration_steps",
                                           "tally_repeatable_migrations"})

# System tables that describe neither users, grants, settings profiles nor server files.
SYSTEM_TABLES: frozenset[str] = frozenset({
    "one", "numbers", "numbers_mt", "zeros", "zeros_mt", "functions", "data_type_families", "time_zones",
})
# Table functions that generate rows and read nothing else.
TABLE_FUNCTIONS: frozenset[str] = frozenset({
    "numbers", "numbers_mt", "zeros", "zeros_mt", "generaterandom", "values", "null", "generate_series",
})


def limits(settings: Settings) -> dict[str, int | str]:
    """The engine-enforced limits of one analyst query, as ClickHouse settings. They are
    applied to the session before `readonly = 1`, which then forbids changing them."""
    return {
        "max_execution_time": settings.analyst_max_seconds,
        "timeout_overflow_mode": "throw",
        "max_memory_usage": settings.analyst_max_memory_mb * 1024 * 1024,
        "max_rows_to_read": settings.analyst_max_rows_to_read,
        "read_overflow_mode": "throw",
        "max_result_rows": settings.analyst_max_result_rows,
        "max_result_bytes": settings.analyst_max_result_mb * 1024 * 1024,
        "result_overflow_mode": "throw",
        "max_threads": settings.analyst_threads,
        # Query threads at nice 10: when CPU is short, the kernel serves ingestion first.
        "os_thread_priority": 10,
    }
