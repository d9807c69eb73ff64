"""Commands of the stream stage: `tally classify-ua`."""

from __future__ import annotations

import json
import sys

import click


@click.command("classify-ua")
def classify_ua_command() -> None:
    """Classify user agents, one per line on stdin, as bot or browser.

    Writes one JSON object per input line, in order:
    {"ua": ..., "bot": true|false, "reason": ..., "rule": ...}. `reason` is the drop reason
    the worker would count (empty_user_agent, headless, bot) and `rule` what matched (a
    crawler-user-agents pattern, uap-core's Spider class, or one of our shape rules).
    """
    from tally.streams.bots import classify_ua

    write = sys.stdout.write
    dumps = json.dumps
    lines: dict[str, str] = {}  # UA -> its output line; traffic repeats UAs heavily
    for line in sys.stdin:
        ua = line.rstrip("\r\n")
        out = lines.get(ua)
        if out is None:
            v = classify_ua(ua)
            out = dumps({"ua": ua, "bot": v.bot, "reason": v.reason, "rule": v.rule}) + "\n"
            if len(lines) < 200_000:
                lines[ua] = out
        write(out)
    sys.stdout.flush()
