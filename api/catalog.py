"""Catalog health: `GET /api/tally/v1/catalog?from=&to=`, the rows `tally catalog report`
prints. Per catalog event, in catalog order: its lifecycle status, volume and last
sighting in the window, the records rejected for it by reason (the worker's and the
sink's bad rows, each record once) and whether it never fired. The report spans every
tenant, so it needs a key for all of them (`tally api-key create --tenant '*'`).
"""

from __future__ import annotations

from aiohttp import web
from tally.api.handler import ApiError, answer, authorize, date_window, rows
from tally.api.sql import Sql
from tally.schemas.catalog import CATALOG
from tally.sinks.reports import Window, catalog_report_sql


async def catalog(request: web.Request) -> web.Response:
    key = await authorize(request)
    if "*" not in key.tenants:
        raise ApiError(403, "This API key has no access to the catalog report, which spans every tenant "
                            "(create one with `tally api-key create --tenant '*'`).")
    frm, to = date_window(request)
    # The SQL holds only the catalog's own names and the two dates, as literals.
    sql = catalog_report_sql(Window(frm, to), [(name, e.status) for name, e in CATALOG.items()])
    found = await rows(request, Sql(sql, {}))
    return answer({"from": str(frm), "to": str(to), "events": [{
        "event": r[0], "status": r[1], "events": int(r[2]),
        "last_seen": r[3].replace(" ", "T") + "Z" if r[3] else None,
        "rejected": int(r[4]), "rejected_by_reason": {problem: int(n) for problem, n in r[5]},
        "never_fired": bool(int(r[6])),
    } for r in found]})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/tally/v1/catalog", catalog)
