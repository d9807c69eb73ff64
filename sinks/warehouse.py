"""The one way to reach ClickHouse: embedded chDB or a server, same client API."""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ProgrammingError

from tally.config import Settings


class WarehouseBusy(OSError):
    """The embedded warehouse's data directory is locked by another process (for instance a
    `tally query` that found no sink listening and opened it itself). An OSError, so the
    sink's start waits it out with backoff (sinks/sink.open_warehouse) instead of crashing."""


def connect(settings: Settings, readonly: bool = False, **kwargs: Any) -> Client:
    """A clickhouse-connect client. Embedded mode takes chDB's one-process lock on the data dir.

    readonly=True gives an analyst's client: the analyst limits (sinks/analyst.py) are
    set on the session, then the engine's own `readonly = 1`, which holds for the whole
    session, so no query through it can write, drop, or change a limit back. (Per-query
    settings are not enough on chDB: the backend applies them with SET and cannot
    restore them after readonly = 1.)
    """
    if settings.embedded_clickhouse:
        settings.clickhouse_dir.mkdir(parents=True, exist_ok=True)
        try:
            client = clickhouse_connect.get_client(dsn=f"chdb:///{settings.clickhouse_dir}", **kwargs)
        except ProgrammingError as exc:
            if "Unable to open the chdb engine" not in str(exc):
                raise
            raise WarehouseBusy(f"the embedded warehouse {settings.clickhouse_dir} is open in another process "
                                "(chDB allows one per data directory)") from exc
        if readonly:
            from tally.sinks.analyst import limits

            for name, value in limits(settings).items():
                client.command(f"SET {name} = {value!r}")
            client.command("SET readonly = 1")
        return client
    if readonly:
        kwargs["settings"] = {**kwargs.get("settings", {}), "readonly": 1}
    return clickhouse_connect.get_client(dsn=settings.clickhouse_url, **kwargs)


def connect_reader(settings: Settings, url: str, what: str, **kwargs: Any) -> Client:
    """Server mode: a client for a read-only user (the analyst's or the dashboard's). Its
    limits and readonly come from the user's settings profile (`tally migrate`), so the
    client sends none; the sink's own credentials are never used for reading."""
    if not url:
        raise LookupError(f"server mode reads with a read-only user: set {what} (see `tally migrate --print-access-sql`)")
    return clickhouse_connect.get_client(dsn=url, **kwargs)
