"""The tracker scripts the collector serves under /js/: the core and its opt-in extensions.

Only the files named in SCRIPTS are served; any other /js/ path is the collector's 404.
The sources in producers/static/ stay commented and readable; what goes out is minified
once at start (rjsmin: comments and whitespace only, no renaming) and gzipped once, so
the size budget in docs/tracker.md is measured on exactly the bytes a browser receives.
"""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from importlib import resources

import rjsmin
from aiohttp import web

SCRIPTS = ("tally.js", "tally.outbound.js", "tally.downloads.js")
HEADERS = {"Content-Type": "application/javascript; charset=utf-8",
           "Cache-Control": "public, max-age=3600", "Vary": "Accept-Encoding"}


def script(name: str) -> bytes:
    """The minified script as served (before gzip)."""
    if name not in SCRIPTS:
        raise KeyError(name)
    source = resources.files("tally.producers").joinpath("static", name).read_text("utf-8")
    return rjsmin.jsmin(source).encode()


def script_handler(name: str) -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
    plain = script(name)
    packed = gzip.compress(plain, 9, mtime=0)

    async def handler(request: web.BaseRequest) -> web.Response:
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=packed, headers={**HEADERS, "Content-Encoding": "gzip"})
        return web.Response(body=plain, headers=HEADERS)

    return handler
