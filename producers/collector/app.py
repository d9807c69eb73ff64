"""The edge collector: accepts browser beacons, stamps them and forwards them to Kafka.

It stays thin: parse, validate, pseudonymise the IP, forward. Enrichment
happens in the stream. The raw client IP never leaves this process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from aiohttp import web
from tally.producers.collector.forwarder import Forwarder, ForwardError
from uuid6 import uuid7

from tally.config import Settings
from tally.secrets import file_secret

log = logging.getLogger(__name__)

MAX_FIELD = 2000
FORWARDER = web.AppKey("forwarder", Forwarder)


def _bad(detail: str, status: int = 400) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


class Collector:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        secret = settings.edge_secret.encode() or file_secret(settings.state_dir / "secrets" / "edge.key")
        self._edge_key = hashlib.blake2b(secret, digest_size=32).digest()
        self.allowed = frozenset(settings.allowed_sites)

    def ip_pseudonym(self, ip: str) -> str:
        return hashlib.blake2b(ip.encode(), key=self._edge_key, digest_size=16).hexdigest()

    async def collect(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _bad("body is not valid JSON")
        if not isinstance(body, dict):
            return _bad("body must be a JSON object")
        site, path, referrer = body.get("site"), body.get("path"), body.get("referrer")
        if not isinstance(site, str) or not site.strip():
            return _bad("site is required")
        if not isinstance(path, str) or not path.strip():
            return _bad("path is required")
        if referrer is not None and not isinstance(referrer, str):
            return _bad("referrer must be a string")
        site = site.strip().lower()
        if site not in self.allowed:
            return _bad("site is not allowed")
        beacon: dict[str, Any] = {
            "event_id": str(uuid7()),
            "received_at": int(time.time() * 1000),
            "site": site,
            "path": path[:MAX_FIELD],
            "referrer": referrer[:MAX_FIELD] if referrer else None,
            "event": "pageview",
            "props": {},
            "user_agent": request.headers.get("User-Agent", ""),
            "ip_pseudonym": self.ip_pseudonym(request.remote or ""),
            "datacenter": False,
        }
        try:
            await request.app[FORWARDER].submit(beacon)
        except ForwardError:
            log.warning("beacon not durable; answering 503")
            return web.Response(status=503, headers={"Retry-After": "5"})
        return web.Response(status=204)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(settings: Settings) -> web.Application:
    collector = Collector(settings)
    app = web.Application(client_max_size=8 * 1024)
    app.router.add_post("/api/v1/collect", collector.collect)
    app.router.add_get("/healthz", healthz)

    async def lifecycle(app: web.Application):
        fwd = Forwarder(settings)
        fwd.start()
        app[FORWARDER] = fwd
        yield
        await fwd.close()

    app.cleanup_ctx.append(lifecycle)
    return app


def run(settings: Settings) -> None:
    # access_log=None: aiohttp's default access log line starts with the client IP.
    web.run_app(make_app(settings), host=settings.collector_host, port=settings.collector_port,
                access_log=None, print=lambda *_: None)
