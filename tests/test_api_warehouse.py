"""The dashboard's reads through the sink's framed socket (api/warehouse.py's SocketWarehouse),
against the sink's real read service and the real engine (chDB in this process).

Rows come back as the engine answers them, on one kept connection; a refused query is
a QueryFailed naming the refusal and leaves the connection usable; a connection the sink
closed (it restarted) is replaced without the caller seeing it; a query that outlives the
timeout, or a sink that is not there, is Unavailable and leaves no connection behind."""

from __future__ import annotations

import asyncio

import pytest
from tally.api.sql import Sql
from tally.api.warehouse import FramedPool, QueryFailed, SocketWarehouse, Unavailable
from tally.sinks.migrate import migrate
from tally.sinks.readservice import ReadService
from tally.sinks.warehouse import connect

from tally.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    state = tmp_path_factory.mktemp("framed")
    s = Settings.from_env({"TALLY_STATE_DIR": str(state), "TALLY_ANALYST_MAX_SECONDS": "5"})
    writer = connect(s)
    migrate(writer, s)
    writer.command("INSERT INTO pageviews (event_id, received_at, site, path, event, visitor_id) "
                   "SELECT generateUUIDv4(number), now64(3), 'a.test', concat('/p/', toString(number % 3)), "
                   "'pageview', number FROM numbers(30)")
    yield s
    writer.close()


@pytest.fixture
def service(settings):
    service = ReadService(settings)
    service.start()
    yield service
    service.stop()


PAGES = Sql("SELECT path, toInt64(count()) FROM pageviews WHERE site = {site:String} GROUP BY path ORDER BY path",
            {"site": "a.test"})


def test_rows_on_one_kept_connection_and_refusals_keep_it(settings, service):
    async def go() -> None:
        wh = SocketWarehouse(settings)
        try:
            assert await wh.rows(PAGES) == [["/p/0", 10], ["/p/1", 10], ["/p/2", 10]]
            kept = list(wh.pool.idle)
            assert len(kept) == 1
            with pytest.raises(QueryFailed, match="file"):
                await wh.rows(Sql("SELECT file('/etc/hostname')"))
            assert wh.pool.idle == kept  # a refusal is an answer: the connection goes on
            assert await wh.rows(Sql("SELECT count() FROM pageviews WHERE site = {site:String}",
                                     {"site": "nobody.test"})) == [[0]]
            assert wh.pool.idle == kept
        finally:
            await wh.close()

    asyncio.run(go())


def test_a_connection_the_sink_closed_is_replaced(settings):
    async def go() -> None:
        wh = SocketWarehouse(settings)
        first = ReadService(settings)
        first.start()
        try:
            assert len(await wh.rows(PAGES)) == 3
            stale = wh.pool.idle[0]
        finally:
            first.stop()  # the sink restarts: its end of the kept connection closes
        second = ReadService(settings)
        second.start()
        try:
            assert len(await wh.rows(PAGES)) == 3
            assert wh.pool.idle and wh.pool.idle[0] is not stale
        finally:
            await wh.close()
            second.stop()

    asyncio.run(go())


def test_a_query_past_the_timeout_is_unavailable_and_its_connection_dropped(settings, service):
    async def go() -> None:
        pool = FramedPool(str(settings.sql_socket_path), timeout=0.2)
        try:
            with pytest.raises(Unavailable, match="TimeoutError"):
                await pool.call({"sql": "SELECT sleep(1)", "params": {}})
            assert pool.idle == []  # its late answer must reach nobody
            # The pool still serves, on a new connection; with room for a loaded machine, as
            # the 0.2 s above was only there to be exceeded.
            pool.timeout = 30
            status, _ = await pool.call({"sql": "SELECT 1", "params": {}})
            assert status == 200
        finally:
            await pool.close()

    asyncio.run(go())


def test_no_sink_is_unavailable(settings):
    async def go() -> None:
        wh = SocketWarehouse(settings)
        with pytest.raises(Unavailable, match="is the sink running"):
            await wh.rows(PAGES)

    asyncio.run(go())
