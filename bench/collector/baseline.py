"""The baseline for bench/collector: the smallest aiohttp app that reads a body and answers 204.

    python bench/collector/baseline.py PORT
"""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web


async def handler(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


if __name__ == "__main__":
    app = web.Application(client_max_size=8 * 1024)
    app.router.add_post("/api/v1/collect", handler)
    # The same event loop as the collector (uvloop) and the same listen backlog (its
    # LISTEN_BACKLOG; not imported, to keep this process minimal), so the comparison keeps
    # the same settings.
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=lambda *_: None,
                loop=uvloop.new_event_loop(), backlog=1024)
