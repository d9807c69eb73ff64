"""`tally migrate` from the operator's side: a ClickHouse server is migrated directly; the
embedded warehouse only when no running sink owns it (chDB allows one process per data
directory, and the sink applies pending migrations each time it starts)."""

from __future__ import annotations

from tally.ops.stack import http_ok, running_pid
from tally.sinks.access import apply_access
from tally.sinks.migrate import migrate
from tally.sinks.warehouse import connect

from tally.config import Settings


class WarehouseBusy(RuntimeError):
    """The embedded warehouse is open in another process, so this one cannot migrate it."""


def migrate_command(settings: Settings) -> list[str]:
    """What `tally migrate` does. A server is migrated directly. Embedded chDB allows one
    process per data directory: while the stack runs, the sink owns it and applies
    pending migrations (and retention changes) each time it starts, so the answer is a
    clear WarehouseBusy naming the owner and how to restart it, not chDB's lock error."""
    restart = ("The sink applies pending migrations, and changed retention settings, each time it "
               "starts: restart it to apply them (`tally down`, then `tally up` with the new TALLY_* "
               "settings), or stop it and run `tally migrate` again.")
    if settings.embedded_clickhouse:
        pid = running_pid(settings, "sink")
        endpoint = f"http://{settings.query_host}:{settings.query_port}"
        if pid is not None or http_ok(f"{endpoint}/healthz"):
            owner = f"pid {pid}" if pid is not None else f"query endpoint {endpoint}"
            raise WarehouseBusy(f"the embedded warehouse {settings.clickhouse_dir} is owned by the running "
                                f"sink ({owner}); only one process can open it. {restart}")
    try:
        client = connect(settings)
    except Exception as exc:
        if not settings.embedded_clickhouse:
            raise
        raise WarehouseBusy(f"cannot open the embedded warehouse {settings.clickhouse_dir} ({str(exc).strip()[:200]}). "
                            f"Another process holds it: only one process can open it. If the stack runs, "
                            f"the sink is that process. {restart}") from None
    try:
        applied = migrate(client, settings)
        if not settings.embedded_clickhouse:
            applied += [f"read-only user {user}" for user in apply_access(client, settings)]
        return applied
    finally:
        client.close()
