"""The collector's logs never hold a client address.

At the source: aiohttp's server formats the client's address into "Error handling request
from %s", and its parser errors quote request bytes (X-Forwarded-For among them). The
collector gives aiohttp a `ServerLog` instead of its logger, so neither is ever formatted:
arguments become a placeholder and a client's malformed request is named by its exception
class only. The collector's own lines take no request data.

As a second line, `NoAddresses` on every handler replaces any IP address left in a record,
tracebacks included.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

NOT_LOGGED = "<client>"
_ARG = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdirfx]")

_ADDRESS = re.compile(
    r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\w|\.\d)"  # IPv4 (also at the end of a sentence)
    r"|(?<![\w:])[0-9A-Fa-f:]*::[0-9A-Fa-f:.]*(?![\w:])"  # IPv6 with ::
    r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"  # full IPv6
)


def client_error(exc: BaseException | None) -> bool:
    """A client's malformed request (aiohttp's parser), whose text quotes the request."""
    return exc is not None and type(exc).__module__ == "aiohttp.http_exceptions"


def _exception(exc_info: Any) -> BaseException | None:
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, tuple):
        return exc_info[1]
    return exc_info if isinstance(exc_info, BaseException) else None


class ServerLog(logging.LoggerAdapter):
    """aiohttp's server logger (`handler_args={"logger": ServerLog()}`): messages keep their
    text, never their arguments (the peer address); client errors lose their text."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        super().__init__(logger or logging.getLogger("aiohttp.server"), {})

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg)
        if args:
            text = _ARG.sub(NOT_LOGGED, text)
        exc = _exception(kwargs.get("exc_info"))
        if client_error(exc):
            text += f": {type(exc).__name__}"
            kwargs["exc_info"] = None
        self.logger.log(level, text, **kwargs)  # no arguments: the text is never %-formatted

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs


class NoAddresses(logging.Filter):
    """Removes IP addresses from log records, tracebacks included (the second line: no
    collector code formats one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            exc = record.exc_info[1]
            if record.name == "aiohttp.server" and client_error(exc):
                text += f": {type(exc).__name__}"  # a client's malformed request: no traceback
            else:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = _ADDRESS.sub("<address>", text), ()
        return True
