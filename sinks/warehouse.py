"""The one way to reach ClickHouse: embedded chDB or a server, same client API."""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from tally.config import Settings


def connect(settings: Settings, readonly: bool = False, **kwargs: Any) -> Client:
    """A clickhouse-connect client. Embedded mode takes chDB's one-process lock on the data dir.

    readonly=True gives an analyst's client: the engine's own `readonly=1`
    holds for its whole session, so no query through it can write, drop or
    switch the setting back. (Per-query settings are not enough on chDB: the
    backend applies them with SET and cannot restore them after readonly=1.)
    """
    if settings.embedded_clickhouse:
        settings.clickhouse_dir.mkdir(parents=True, exist_ok=True)
        client = clickhouse_connect.get_client(dsn=f"chdb:///{settings.clickhouse_dir}", **kwargs)
        if readonly:
            client.command("SET readonly = 1")
        return client
    if readonly:
        kwargs["settings"] = {**kwargs.get("settings", {}), "readonly": 1}
    return clickhouse_connect.get_client(dsn=settings.clickhouse_url, **kwargs)
