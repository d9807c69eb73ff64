"""The analyst pool and the API-key operations: the core that both doors of the read
service (readservice.py's HTTP on a Unix socket, sqlsocket.py's framed socket) run on.

Every query passes the SQL guard and runs on one of TALLY_ANALYST_CONCURRENCY threads,
each with its own read-only session carrying the analyst limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client
from prometheus_client import Counter
from tally.sinks import keystore
from tally.sinks.query import AnalystSession, QueryError
from tally.sinks.sqlguard import Guard
from tally.sinks.warehouse import connect

from tally.config import Settings

log = logging.getLogger(__name__)

QUEUE_PER_SLOT = 8
CONTENT_TYPES = {"JSON": "application/json", "JSONCompact": "application/json", "JSONEachRow": "application/x-ndjson",
                 "CSVWithNames": "text/csv", "TabSeparatedWithNames": "text/tab-separated-values"}

QUERIES = Counter("tally_analyst_queries_total", "Analyst queries by outcome (ok, refused, failed, busy).",
                  ["outcome"])


class Busy(RuntimeError):
    pass


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


def error(status: int, message: str, **extra: Any) -> Answer:
    return Answer(status, json.dumps({"error": message, **extra}).encode())


class AnalystPool:
    """Runs analyst queries on their own threads, each with its own read-only chDB session."""

    def __init__(self, settings: Settings, guard: Guard) -> None:
        self.settings = settings
        self.guard = guard
        self.slots = settings.analyst_concurrency
        self.executor = ThreadPoolExecutor(self.slots, thread_name_prefix="analyst", initializer=self._init_thread)
        self.local = threading.local()
        self.pending = 0
        self.lock = threading.Lock()
        # At most `slots` queries run at once, whichever socket they came from.
        self.running = threading.BoundedSemaphore(self.slots)

    @staticmethod
    def _init_thread() -> None:
        with contextlib.suppress(OSError):  # nice 10, this thread only: under CPU pressure inserts go first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)

    def session(self) -> AnalystSession:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = AnalystSession(self.settings, self.guard)
        return session

    def close_session(self) -> None:
        """Close the calling thread's session (a framed-socket thread whose connection ended)."""
        session = getattr(self.local, "session", None)
        if session is not None:
            session.close()
            self.local.session = None

    def _admit(self) -> Answer | None:
        """None: the query may wait for a slot; otherwise the 503 to answer."""
        with self.lock:
            if self.pending >= self.slots * QUEUE_PER_SLOT:
                QUERIES.labels(outcome="busy").inc()
                return error(503, f"{self.pending} analyst queries are waiting; try again shortly")
            self.pending += 1
        return None

    def _done(self) -> None:
        with self.lock:
            self.pending -= 1

    def run_here(self, fn: Callable[[], Answer]) -> Answer:
        """Run fn on the calling thread (one of the framed socket's, at nice 10) once a slot is free."""
        busy = self._admit()
        if busy is not None:
            return busy
        try:
            with self.running:
                return fn()
        finally:
            self._done()

    async def run(self, fn: Callable[[], Answer]) -> Answer:
        busy = self._admit()
        if busy is not None:
            return busy

        def limited() -> Answer:
            with self.running:
                return fn()

        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, limited)
        finally:
            self._done()

    def sql(self, sql: str, fmt: str, params: dict[str, Any]) -> Answer:
        try:
            out = self.session().run(sql, fmt, params)
        except QueryError as exc:
            QUERIES.labels(outcome="refused" if exc.refused else "failed").inc()
            return error(400, str(exc), refused=exc.refused)
        QUERIES.labels(outcome="ok").inc()
        return Answer(200, out, CONTENT_TYPES[fmt])

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class KeyOps:
    """The typed API-key operations, on a session of their own (they write)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="api-keys")
        self._client: Client | None = None

    async def run(self, fn: Callable[[Client], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(self._session()))

    def _session(self) -> Client:
        if self._client is None:  # only ever used from the one executor thread
            self._client = connect(self.settings)
        return self._client

    def find(self, key_id: str) -> keystore.KeyRecord | None:
        """From any thread (the framed socket's): on the keys' own thread and session."""
        return self.executor.submit(lambda: keystore.find(self._session(), key_id)).result()
