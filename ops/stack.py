"""`tally up / status / down`: the local stack as background processes.

Each component runs in its own session (process group) with its log under
`<state>/logs/` and a PID file under `<state>/run/`. The PID file records the
process start time too, so a recycled PID is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tally.config import Settings, mask_password

if TYPE_CHECKING:
    from tally.infra.kafka import Node


@dataclass
class Component:
    name: str
    command: Callable[[Settings], list[str]]
    ready: Callable[[Settings], bool]
    describe: Callable[[Settings], str]
    broker: bool = False  # a broker node: `tally up` starts them together (a quorum needs its peers)


def _tally(*args: str) -> Callable[[Settings], list[str]]:
    return lambda s: [sys.executable, "-m", "tally.ops", *args]


def _broker_command(s: Settings) -> list[str]:
    if s.broker == "tansu":
        from tally.infra import tansu

        return tansu.broker_command(s.broker_port)
    from tally.infra import kafka

    kafka.ensure_jars()
    return kafka.broker_command(s.state_dir / "kafka", s.broker_port, s.broker_heap_mb)


def kafka_nodes(s: Settings) -> list[Node]:
    """The nodes of the local Kafka cluster of TALLY_KAFKA_BROKERS > 1 nodes (infra/kafka.py)."""
    from tally.infra import kafka

    return kafka.cluster_nodes(s.state_dir / f"kafka-{s.kafka_brokers}", s.broker_port, s.kafka_brokers)


def _node_command(node_id: int) -> Callable[[Settings], list[str]]:
    def command(s: Settings) -> list[str]:
        from tally.infra import kafka

        kafka.ensure_jars()
        nodes = kafka_nodes(s)
        return kafka.node_command(nodes[0].data_dir.parent, nodes, node_id, s.broker_heap_mb)

    return command


def node_ready(s: Settings, node_id: int) -> bool:
    """Node node_id of the local cluster answers, and the cluster counts it as a live broker."""
    return kafka_node_live(kafka_nodes(s)[node_id - 1].address, node_id)


def kafka_node_live(address: str, node_id: int) -> bool:
    """The Kafka node at address answers metadata requests and lists itself among the
    live brokers (registered with the quorum, not fenced)."""
    if not port_open(*_host_port(address)):
        return False
    from confluent_kafka.admin import AdminClient

    try:
        meta = AdminClient({"bootstrap.servers": address, "log_level": 3}).list_topics(timeout=3)
    except Exception:
        return False
    return node_id in meta.brokers


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


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
    """Some host of the bootstrap list answers metadata requests."""
    if not any(port_open(*_host_port(h)) for h in s.bootstrap_hosts):
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

    if not any(port_open(*_host_port(h)) for h in s.bootstrap_hosts):
        return False  # no broker: nothing to ask (and no librdkafka connection errors on stderr)

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
              lambda s: f"sink -> {'embedded ClickHouse ' + str(s.clickhouse_dir) if s.embedded_clickhouse else mask_password(s.clickhouse_url)}; "
                        f"health on http://{s.query_host}:{s.query_port}"
                        + (f"; warehouse socket {s.socket_path}" if s.embedded_clickhouse else "")),
    Component("worker", _tally("worker"), worker_ready,
              lambda s: f"stream worker (app id {s.app_id})"),
    Component("collector", _tally("collector"),
              lambda s: http_ok(f"http://{s.collector_host}:{s.collector_port}/healthz"),
              lambda s: f"collector on http://{s.collector_host}:{s.collector_port}"),
    Component("dashboard", _tally("dashboard"),
              lambda s: http_ok(f"http://{_loopback(s.dashboard_host)}:{s.dashboard_port}/healthz"),
              lambda s: f"Stats API on http://{s.dashboard_host}:{s.dashboard_port}"),
]


def _loopback(host: str) -> str:
    """Where to probe a listener: a wildcard address is reached on loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def components(s: Settings) -> list[Component]:
    """What `tally up` runs, in start order: the local broker (one, or node 1..N of a
    cluster, named broker-<i>) unless TALLY_KAFKA_BOOTSTRAP is set, then the rest."""
    rest = [c for c in COMPONENTS if c.name != "broker"]
    if not s.local_broker:
        return rest
    if s.kafka_brokers == 1:
        return [replace(COMPONENTS[0], broker=True), *rest]
    nodes = [Component(f"broker-{n.node_id}", _node_command(n.node_id),
                       lambda s, i=n.node_id: node_ready(s, i),
                       lambda s, n=n: f"kafka node {n.node_id} of {s.kafka_brokers} on {n.address}",
                       broker=True)
             for n in kafka_nodes(s)]
    return [*nodes, *rest]


# --- PID files ---------------------------------------------------------------

@contextlib.contextmanager
def stack_lock(s: Settings, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold the state dir's `up`/`down` lock (flock on run/stack.lock), waiting for it if
    another holds it: two at once would both see a component missing and both start it,
    and the PID file would name only one of them. The descriptor is not inherited, so the
    lock goes with this process, also when it is killed."""
    s.run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(s.run_dir / "stack.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


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


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600 from creation, also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


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
    return bool(stop_together(s, [name], timeout))


def stop_together(s: Settings, names: list[str], timeout: float = 20.0) -> list[str]:
    """Stop several components at once (the nodes of a cluster: one by one, the last
    ones would wait for a quorum that is already gone). Returns the names stopped."""
    pids = {name: pid for name in names if (pid := running_pid(s, name)) is not None}
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        alive = [pid for pid in pids.values() if _group_alive(pid)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_group_alive(pid) for pid in alive):
            time.sleep(0.1)
    for name in pids:
        _pidfile(s, name).unlink(missing_ok=True)
    return list(pids)


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
        if running_pid(s, comp.name) is None:
            raise RuntimeError(f"{comp.name} exited during start; see {s.log_dir / (comp.name + '.log')}")
        if on_tick:
            on_tick()
        time.sleep(0.3)
    raise RuntimeError(f"{comp.name} not ready after {timeout:.0f}s; see {s.log_dir / (comp.name + '.log')}")
