"""`tally up / status / down`: the local stack as background processes.

Each component runs in its own session (process group) with its log under
`<state>/logs/` and a PID file under `<state>/run/`. The PID file records the
process start time too, so a recycled PID is never mistaken for ours.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tally.config import Settings, masked


@dataclass
class Component:
    name: str
    command: Callable[[Settings], list[str]]
    ready: Callable[[Settings], bool]
    describe: Callable[[Settings], str]


def _tally(*args: str) -> Callable[[Settings], list[str]]:
    return lambda s: [sys.executable, "-m", "tally.ops", *args]


def _broker_command(s: Settings) -> list[str]:
    if s.broker == "tansu":
        from tally.infra import tansu

        return tansu.broker_command(s.broker_port)
    from tally.infra import kafka

    kafka.ensure_jars()
    return kafka.broker_command(s.state_dir / "kafka", s.broker_port, s.broker_heap_mb)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except Exception:
        return False


def broker_ready(s: Settings) -> bool:
    host, _, port = s.bootstrap.split(",")[0].rpartition(":")
    if not port_open(host, int(port)):
        return False
    from tally.topics import admin

    try:
        admin(s).list_topics(timeout=3)
        return True
    except Exception:
        return False


def worker_ready(s: Settings) -> bool:
    """Ready once the worker's consumer group is stable with at least one member."""
    from confluent_kafka import ConsumerGroupState

    from tally.topics import admin

    client = admin(s)  # keep a reference: futures of a collected client never resolve
    try:
        fut = client.describe_consumer_groups([s.app_id], request_timeout=3)[s.app_id]
        group = fut.result(timeout=5)
    except Exception:
        return False
    # Tansu reports a joined group as STABLE but never lists its members.
    members_known = not (s.local_broker and s.broker == "tansu")
    return group.state == ConsumerGroupState.STABLE and (len(group.members) > 0 or not members_known)


COMPONENTS: list[Component] = [
    Component("broker", _broker_command, broker_ready,
              lambda s: f"{s.broker} broker on {s.bootstrap}"),
    Component("sink", _tally("sink"),
              lambda s: http_ok(f"http://{s.query_host}:{s.query_port}/healthz"),
              lambda s: f"sink -> {'embedded ClickHouse ' + str(s.clickhouse_dir) if s.embedded_clickhouse else masked(s.clickhouse_url)}; "
                        f"query endpoint http://{s.query_host}:{s.query_port}"),
    Component("worker", _tally("worker"), worker_ready,
              lambda s: f"stream worker (app id {s.app_id})"),
    Component("collector", _tally("collector"),
              lambda s: http_ok(f"http://{s.collector_host}:{s.collector_port}/healthz"),
              lambda s: f"collector on http://{s.collector_host}:{s.collector_port}"),
]


def components(s: Settings) -> list[Component]:
    return [c for c in COMPONENTS if c.name != "broker" or s.local_broker]


# --- PID files ---------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime


def _pidfile(s: Settings, name: str) -> Path:
    return s.run_dir / f"{name}.pid"


def running_pid(s: Settings, name: str) -> int | None:
    """PID of our running component, or None (a stale PID file is removed)."""
    path = _pidfile(s, name)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        state = None
    if state in (None, "Z") or _start_time(pid) != info.get("start"):
        path.unlink(missing_ok=True)
        return None
    return pid


def spawn(s: Settings, comp: Component, env: dict[str, str]) -> int:
    s.run_dir.mkdir(parents=True, exist_ok=True)
    s.log_dir.mkdir(parents=True, exist_ok=True)
    cmd = comp.command(s)
    log = open(s.log_dir / f"{comp.name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    log.close()
    _pidfile(s, comp.name).write_text(json.dumps(
        {"pid": proc.pid, "start": _start_time(proc.pid), "cmd": cmd}))
    return proc.pid


def stop(s: Settings, name: str, timeout: float = 20.0) -> bool:
    """Stop a component's whole process group: SIGTERM, then SIGKILL after timeout."""
    pid = running_pid(s, name)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
        if not _group_alive(pid):
            break
    _pidfile(s, name).unlink(missing_ok=True)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg; treat a group of only zombies as gone.
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_ready(s: Settings, comp: Component, timeout: float, on_tick: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if comp.ready(s):
            return
        if (comp.name != "broker" or s.local_broker) and running_pid(s, comp.name) is None:
            raise RuntimeError(f"{comp.name} exited during start; see {s.log_dir / (comp.name + '.log')}")
        if on_tick:
            on_tick()
        time.sleep(0.3)
    raise RuntimeError(f"{comp.name} not ready after {timeout:.0f}s; see {s.log_dir / (comp.name + '.log')}")
