"""Product adoption (seed 003): `GET /api/tally/v1/adoption?from=&to=&tenant=`.

The five event families with their operator labels, event counts, active
workspaces and last event time, the active workspaces across the five, and an
explicit zero state (`"empty": true`, every family at 0) when the window has no
product events. Read from the `adoption_summary` / `adoption_by_tenant` views,
the same numbers `tally query adoption [--tenant]` prints.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from tally.api.handler import ApiError, answer, authorize, date_window, rows
from tally.api.sql import Sql

COLUMNS = "family, label, toInt64(events), toInt64(active_workspaces), toString(last_event_at)"


def _when(value: str | None) -> str | None:
    return value.replace(" ", "T") + "Z" if value else None


async def adoption(request: web.Request) -> web.Response:
    key = await authorize(request)
    tenant = request.query.get("tenant") or None
    if "*" not in key.tenants and (tenant is None or tenant not in key.tenants):
        scope = f"tenant `{tenant}`" if tenant else "all tenants (leave out `tenant` only with a `*` key)"
        raise ApiError(403, f"This API key has no access to the product adoption of {scope}.")
    frm, to = date_window(request)
    params: dict[str, Any] = {"a": str(frm), "b": str(to)}
    if tenant is None:
        sql = f"SELECT {COLUMNS} FROM adoption_summary(date_from = {{a:String}}, date_to = {{b:String}})"
    else:
        sql = (f"SELECT {COLUMNS} FROM adoption_by_tenant(tenant = {{t:String}}, date_from = {{a:String}}, "
               "date_to = {b:String})")
        params["t"] = tenant
    found = await rows(request, Sql(sql, params))
    families = [{"family": r[0], "label": r[1], "events": int(r[2]), "active_workspaces": int(r[3]),
                 "last_event_at": _when(r[4])} for r in found if r[0] != "all"]
    total = next((r for r in found if r[0] == "all"), None)
    events = int(total[2]) if total else 0
    return answer({
        "from": str(frm), "to": str(to), "tenant": tenant,
        "families": families,
        "events": events,
        "active_workspaces": int(total[3]) if total else 0,
        "last_event_at": _when(total[4]) if total else None,
        "empty": events == 0,
    })


def setup(app: web.Application) -> None:
    app.router.add_get("/api/tally/v1/adoption", adoption)
