"""Commands of the stream stage: `tally classify-ua`."""

from __future__ import annotations

import json
import sys

import click


@click.command("classify-ua")
@click.option("--explain", is_flag=True,
              help="Print each step of the decision for every UA, as readable text, instead of JSON lines.")
def classify_ua_command(explain: bool) -> None:
    """Classify user agents, one per line on stdin, as bot or browser.

    Writes one JSON object per input line, in order:
    {"ua": ..., "bot": true|false, "reason": ..., "rule": ...}. `reason` is the drop reason
    the worker would count (empty_user_agent, headless, bot) and `rule` what dropped it (a
    crawler-user-agents pattern, `matomo...:<name>` from Matomo's lists, `spider` for
    uap-core's Spider class, or one of our `shape:...` rules). With --explain, each UA is
    followed by the steps tried (allowlist, strong rules, lists, weak signals) and their result.
    """
    if explain:
        _explain_lines()
        return
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


def _explain_lines() -> None:
    from tally.streams.bots import explain

    for line in sys.stdin:
        ua = line.rstrip("\r\n")
        verdict, steps = explain(ua)
        label = f"bot, reason {verdict.reason}, rule {verdict.rule or '-'}" if verdict.bot else "browser"
        width = max(len(name) for name, _ in steps)
        click.echo(f"{ua!r}\n  => {label}")
        for i, (name, result) in enumerate(steps, 1):
            click.echo(f"  {i}. {name.ljust(width)}  {result}")
        click.echo("")
