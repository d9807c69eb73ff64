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

    out = sys.stdout
    dumps = json.dumps
    for line in sys.stdin:
        ua = line.rstrip("\r\n")
        v = classify_ua(ua)
        out.write(dumps({"ua": ua, "bot": v.bot, "reason": v.reason, "rule": v.rule}) + "\n")
    out.flush()
