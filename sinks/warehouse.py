"""The one way to reach ClickHouse: embedded chDB or a server, same client API."""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from tally.config import Settings

READ_ONLY = {"readonly": 1}


def connect(settings: Settings, **kwargs: Any) -> Client:
    """A clickhouse-connect client. Embedded mode takes chDB's one-process lock on the data dir."""
    if settings.embedded_clickhouse:
        settings.clickhouse_dir.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb:///{settings.clickhouse_dir}", **kwargs)
    return clickhouse_connect.get_client(dsn=settings.clickhouse_url, **kwargs)
