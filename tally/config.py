"""Settings: every TALLY_* environment variable, read once and validated at start.

`VARIABLES` is the single source of truth: `Settings.from_env()` parses it and
`tally config docs` renders docs/configuration.md from it, so the docs cannot
drift from the code.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A TALLY_* variable has a bad value. The message names it."""


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if lo is not None and value < lo:
            raise ValueError(f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"must be <= {hi}, got {value}")
        return value

    return parse


def _float(lo: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if value < lo:
            raise ValueError(f"must be >= {lo}, got {value}")
        return value

    return parse


def _bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected one of 1/0/true/false/yes/no/on/off, got {raw!r}")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        v = raw.strip().lower()
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")
        return v

    return parse


def _port_or_off(raw: str) -> int | None:
    v = raw.strip().lower()
    if v == "off":
        return None
    return _int(0, 65535)(v)


def _str(raw: str) -> str:
    return raw.strip()


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in raw.split(",") if p.strip())


def _cidrs(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in _csv(raw):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR range") from None
    return tuple(nets)


def _url(raw: str) -> str:
    v = raw.strip()
    if v and not v.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {raw!r}")
    return v.rstrip("/")


def _bootstrap(raw: str) -> str:
    v = raw.strip()
    for part in filter(None, v.split(",")):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected host:port[,host:port...], got {raw!r}")
    return v


@dataclass(frozen=True)
class Var:
    env: str
    attr: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    group: str


VARIABLES: tuple[Var, ...] = (
    # Local stack
    Var("TALLY_STATE_DIR", "state_dir", ".tally", _str, "Directory for all local state: broker log dirs, embedded ClickHouse, salts spool, PID files and logs.", "Local stack"),
    Var("TALLY_BROKER", "broker", "kafka", _choice("kafka", "tansu"), "Which local broker `tally up` starts: `kafka` (Apache Kafka in KRaft mode, persistent, supports transactions) or `tansu` (lighter, memory-only: a restart loses every topic).", "Local stack"),
    Var("TALLY_KAFKA_BOOTSTRAP", "kafka_bootstrap", "", _bootstrap, "Bootstrap servers of an external Kafka cluster. When set, no local broker is started.", "Local stack"),
    Var("TALLY_BROKER_PORT", "broker_port", "9092", _int(1, 65535), "Port of the local broker's client listener (127.0.0.1).", "Local stack"),
    Var("TALLY_BROKER_HEAP_MB", "broker_heap_mb", "512", _int(128), "Java heap of the local Kafka broker, in MiB.", "Local stack"),
    Var("TALLY_CLICKHOUSE_URL", "clickhouse_url", "", _url, "URL of a ClickHouse server (e.g. http://user:pass@host:8123/db). Empty: embedded ClickHouse (chDB) under the state directory, owned by the sink.", "Local stack"),
    Var("TALLY_QUERY_PORT", "query_port", "8124", _int(1, 65535), "Port of the sink's read-only query endpoint, through which `tally query` reaches the embedded warehouse while the stack runs.", "Local stack"),
    Var("TALLY_QUERY_HOST", "query_host", "127.0.0.1", _str, "Address the sink's query endpoint listens on. Loopback by default: it serves analysts' SQL.", "Local stack"),
    Var("TALLY_LOG_LEVEL", "log_level", "info", _choice("debug", "info", "warning", "error"), "Log level of every component.", "Local stack"),
    # Kafka
    Var("TALLY_TOPIC_PREFIX", "topic_prefix", "tally.", _str, "Prefix of every topic name; lets several stacks share one cluster.", "Kafka"),
    Var("TALLY_TOPIC_PARTITIONS", "topic_partitions", "12", _int(1, 1024), "Partitions of the data topics. Stream workers scale up to this many processes.", "Kafka"),
    Var("TALLY_SCHEMA_REGISTRY_URL", "schema_registry_url", "", _url, "Confluent-compatible schema registry. When set, records use the Confluent wire format; otherwise Avro single-object encoding.", "Kafka"),
    # Product SDK (tally.producers.sdk), read by the applications that embed it
    Var("TALLY_DISABLED", "disabled", "0", _bool, "Opt-out: `1` turns the product SDK and the request middleware into no-ops (nothing is validated, queued or sent).", "Product SDK"),
    Var("TALLY_SDK_APP", "sdk_app", "", _str, "Name of the publishing application, stored with every product event.", "Product SDK"),
    Var("TALLY_SDK_STRICT", "sdk_strict", "0", _bool, "`1`: track() raises on an event the catalog rejects (for tests and development). `0` (production): the event is dropped and counted by reason.", "Product SDK"),
    Var("TALLY_SDK_QUEUE_EVENTS", "sdk_queue_events", "100000", _int(1, 10_000_000), "Most events the SDK holds in memory while they wait for the broker; beyond it, events are dropped (reason queue_full).", "Product SDK"),
    Var("TALLY_SDK_MAX_BLOCK_MS", "sdk_max_block_ms", "0", _int(0, 60_000), "Longest time track() waits for queue space before it drops the event. 0: never wait.", "Product SDK"),
    Var("TALLY_SDK_DELIVERY_TIMEOUT_MS", "sdk_delivery_timeout_ms", "30000", _int(1000), "An event not acknowledged by the broker within this time is dropped (reason delivery_failed).", "Product SDK"),
    Var("TALLY_SDK_EXIT_FLUSH_SECONDS", "sdk_exit_flush_seconds", "5", _float(0.0), "How long interpreter exit waits for queued events to be delivered.", "Product SDK"),
    # Collector
    Var("TALLY_COLLECTOR_HOST", "collector_host", "127.0.0.1", _str, "Address the collector listens on.", "Collector"),
    Var("TALLY_COLLECTOR_PORT", "collector_port", "8000", _int(1, 65535), "Port the collector listens on.", "Collector"),
    Var("TALLY_ALLOWED_SITES", "allowed_sites", "localhost,example.com", _csv, "Comma-separated sites (hostnames) the collector accepts beacons for. Empty rejects everything.", "Collector"),
    Var("TALLY_TRUSTED_PROXIES", "trusted_proxies", "", _cidrs, "Comma-separated IPs/CIDRs of reverse proxies whose X-Forwarded-For is believed.", "Collector"),
    Var("TALLY_EDGE_SECRET", "edge_secret", "", _str, "Secret key for the collector's IP pseudonym. Empty: generated once and kept in the state directory (mode 0600).", "Collector"),
    Var("TALLY_CORS_ORIGINS", "cors_origins", "*", _csv, "Origins allowed to send beacons from browsers (Access-Control-Allow-Origin): `*` for any, or comma-separated origins such as https://example.com.", "Collector"),
    Var("TALLY_HONOR_GPC", "honor_gpc", "true", _bool, "Drop beacons (answering 204) from browsers that send `Sec-GPC: 1`.", "Collector"),
    Var("TALLY_HONOR_DNT", "honor_dnt", "false", _bool, "Drop beacons (answering 204) from browsers that send `DNT: 1`.", "Collector"),
    Var("TALLY_DROP_EMPTY_UA", "drop_empty_ua", "false", _bool, "Drop beacons (answering 204) that have no User-Agent header.", "Collector"),
    Var("TALLY_RATE_LIMIT_PER_SECOND", "rate_limit_per_second", "20", _float(0.0), "Sustained beacons per second per client (token bucket, per collector worker). 0 switches the limit off.", "Collector"),
    Var("TALLY_RATE_LIMIT_BURST", "rate_limit_burst", "200", _int(1), "Bucket size of the per-client rate limit: beacons a client may send at once.", "Collector"),
    Var("TALLY_SPOOL_MAX_MB", "spool_max_mb", "256", _int(1), "Largest size of each collector worker's on-disk spool (used while the broker is unreachable). When full the collector answers 503.", "Collector"),
    Var("TALLY_SPOOL_AFTER_MS", "spool_after_ms", "1000", _int(50, 60000), "How long a beacon waits for the Kafka acknowledgement before it is written to the spool and answered.", "Collector"),
    Var("TALLY_COLLECTOR_WORKERS", "collector_workers", "1", _int(1, 64), "Collector processes sharing the port (SO_REUSEPORT); `tally collector --workers` overrides it.", "Collector"),
    Var("TALLY_DROPS_FLUSH_SECONDS", "drops_flush_seconds", "10", _float(0.1), "How often the collector sends its counts of edge drops to the drops topic.", "Collector"),
    # Streams
    Var("TALLY_APP_ID", "app_id", "tally-stream", _str, "Faust application id: stream workers with the same id share the partitions.", "Streams"),
    Var("TALLY_SALT_PERIOD", "salt_period", "day", _choice("day", "month"), "Visitor-salt rotation period. `month` allows monthly unique visitors; `day` gives stronger privacy.", "Streams"),
    Var("TALLY_SALT_GRACE_HOURS", "salt_grace_hours", "48", _int(1), "How long a period's salt outlives the period (for late events). Then it is tombstoned and compacted away: old visitor hashes can no longer be re-derived.", "Streams"),
    Var("TALLY_ALLOWED_LATENESS_HOURS", "allowed_lateness_hours", "48", _int(0), "Events older than this (by the worker's clock) go to bad rows as too_late; younger late events update their window and re-emit it. Capped by TALLY_SALT_GRACE_HOURS.", "Streams"),
    Var("TALLY_KEEP_USER_AGENT", "keep_user_agent", "false", _bool, "Keep the raw user agent in enriched pageviews (off: only browser, OS and device class are kept).", "Streams"),
    Var("TALLY_REFERRER_SPAM_FILE", "referrer_spam_file", "", _str, "File of referrer-spam domains, one per line (e.g. Matomo's referrer-spam-list spammers.txt). Pageviews from these referrers (and their subdomains) are dropped with reason referrer_spam.", "Streams"),
    Var("TALLY_PROCESSING_GUARANTEE", "processing_guarantee", "at_least_once", _choice("at_least_once", "exactly_once"), "Faust processing guarantee of the stream worker. Counts are exact with the default (window state skips replays, see docs/streams.md); `exactly_once` adds Kafka transactions (Apache Kafka only, not Tansu; experimental: slower, not covered by the crash test).", "Streams"),
    Var("TALLY_CLOCK_OFFSET_SECONDS", "clock_offset_seconds", "0", _int(), "Shifts the stream worker's clock (salt rotation, lateness). For tests and replays; leave 0 in production.", "Streams"),
    Var("TALLY_SESSION_TIMEOUT_SECONDS", "session_timeout_seconds", "1800", _int(0), "A visitor's events less than this apart are one session (visit); a session also ends at the salt-period boundary. 0 switches sessions off (no visit aggregates, no session rows).", "Streams"),
    Var("TALLY_TOTALS_FLUSH_SECONDS", "totals_flush_seconds", "2", _float(0.1), "How often a stream worker emits the totals of the windows that changed (to the aggregates topic). Lower: fresher aggregates, more records.", "Streams"),
    Var("TALLY_WORKER_STALL_SECONDS", "worker_stall_seconds", "300", _float(0.0), "Watchdog: a stream worker that holds partitions with records left to process and makes no progress on one of them for this long logs the stuck stage and what it waits for, and exits with status 75 so its supervisor restarts it. 0 switches the watchdog off.", "Streams"),
    Var("TALLY_WORKER_METRICS_HOST", "worker_metrics_host", "127.0.0.1", _str, "Address the stream worker's Prometheus endpoint (`/metrics`: step timings, drops and bad rows by reason, lag and stall time per partition) listens on. Loopback by default.", "Streams"),
    Var("TALLY_WORKER_METRICS_PORT", "worker_metrics_port", "0", _port_or_off, "Port of the stream worker's `/metrics`. `0`: a free port chosen at start, so several workers can share a host; the worker logs it and writes it to its health report (`tally status --json`). Set a fixed port when one worker runs per host or container and Prometheus scrapes it; `off` switches the endpoint off.", "Streams"),
    Var("TALLY_TEST_WORKER_HANG", "test_worker_hang", "", _choice("", "stage1-beacons", "stage2-windows", "product-windows"), "Test hook: the named stage of the stream worker never finishes its first record (to test the watchdog). Never set in production.", "Streams"),
    # Sink and retention
    Var("TALLY_SINK_BATCH_ROWS", "sink_batch_rows", "10000", _int(1), "Rows at which the sink inserts its batch (see also TALLY_SINK_MAX_INSERT_ROWS).", "Sink"),
    Var("TALLY_SINK_MAX_INSERT_ROWS", "sink_max_insert_rows", "100000", _int(1), "Largest ClickHouse insert. When more records already wait in the consumer (a backlog), a batch that reached TALLY_SINK_BATCH_ROWS keeps taking them up to this many rows, within TALLY_SINK_BATCH_SECONDS, so catching up costs fewer, larger inserts. Set it to TALLY_SINK_BATCH_ROWS for fixed-size batches.", "Sink"),
    Var("TALLY_SINK_BATCH_SECONDS", "sink_batch_seconds", "1.0", _float(0.01), "Longest time a row waits in the sink before its batch is inserted.", "Sink"),
    Var("TALLY_RAW_RETENTION_DAYS", "raw_retention_days", "540", _int(1), "TTL of raw pageview rows in ClickHouse, in days.", "Sink"),
    Var("TALLY_PRODUCT_RETENTION_DAYS", "product_retention_days", "90", _int(1), "TTL of raw product usage events in ClickHouse, in days.", "Sink"),
    Var("TALLY_BAD_ROWS_RETENTION_DAYS", "bad_rows_retention_days", "30", _int(1), "TTL of bad rows in ClickHouse and of the bad-rows topic, in days.", "Sink"),
    Var("TALLY_TEST_SINK_CRASH_AFTER_INSERT", "test_sink_crash_after_insert", "0", _bool, "Test hook: the sink kills itself (SIGKILL) after its first insert and before committing the offsets. Never set in production.", "Sink"),
    Var("TALLY_TEST_SINK_OUTAGE_FILE", "test_sink_outage_file", "", _str, "Test hook: while this file exists, every sink insert fails as if ClickHouse were unreachable. Never set in production.", "Sink"),
)


@dataclass(frozen=True)
class Settings:
    state_dir: Path = Path(".tally")
    broker: str = "kafka"
    kafka_bootstrap: str = ""
    broker_port: int = 9092
    broker_heap_mb: int = 512
    clickhouse_url: str = ""
    query_port: int = 8124
    query_host: str = "127.0.0.1"
    log_level: str = "info"
    topic_prefix: str = "tally."
    topic_partitions: int = 12
    schema_registry_url: str = ""
    disabled: bool = False
    sdk_app: str = ""
    sdk_strict: bool = False
    sdk_queue_events: int = 100000
    sdk_max_block_ms: int = 0
    sdk_delivery_timeout_ms: int = 30000
    sdk_exit_flush_seconds: float = 5.0
    collector_host: str = "127.0.0.1"
    collector_port: int = 8000
    allowed_sites: tuple[str, ...] = ("localhost", "example.com")
    trusted_proxies: tuple[Any, ...] = ()
    edge_secret: str = ""
    cors_origins: tuple[str, ...] = ("*",)
    honor_gpc: bool = True
    honor_dnt: bool = False
    drop_empty_ua: bool = False
    rate_limit_per_second: float = 20.0
    rate_limit_burst: int = 200
    spool_max_mb: int = 256
    spool_after_ms: int = 1000
    collector_workers: int = 1
    drops_flush_seconds: float = 10.0
    app_id: str = "tally-stream"
    salt_period: str = "day"
    salt_grace_hours: int = 48
    allowed_lateness_hours: int = 48
    keep_user_agent: bool = False
    referrer_spam_file: str = ""
    clock_offset_seconds: int = 0
    processing_guarantee: str = "at_least_once"
    session_timeout_seconds: int = 1800
    totals_flush_seconds: float = 2.0
    worker_stall_seconds: float = 300.0
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int | None = 0
    test_worker_hang: str = ""
    sink_batch_rows: int = 10000
    sink_max_insert_rows: int = 100000
    sink_batch_seconds: float = 1.0
    test_sink_crash_after_insert: bool = False
    test_sink_outage_file: str = ""
    raw_retention_days: int = 540
    product_retention_days: int = 90
    bad_rows_retention_days: int = 30
    env: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = environ.get(var.env, var.default)
            try:
                values[var.attr] = var.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{var.env}: {exc}") from None
        values["state_dir"] = Path(values["state_dir"]).expanduser().absolute()
        tally_env = {k: v for k, v in environ.items() if k.startswith("TALLY_")}
        return cls(**values, env=tally_env)

    @property
    def bootstrap(self) -> str:
        """Where clients connect: the external cluster, or the local broker."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker_port}"

    @property
    def local_broker(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def embedded_clickhouse(self) -> bool:
        return not self.clickhouse_url

    @property
    def clickhouse_dir(self) -> Path:
        return self.state_dir / "clickhouse"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


assert {f.name for f in fields(Settings)} - {"env"} == {v.attr for v in VARIABLES}


def configuration_markdown() -> str:
    """docs/configuration.md, generated from VARIABLES."""
    out = [
        "# Configuration",
        "",
        "Every component reads the same `TALLY_*` environment variables once, at start, and",
        "stops with one line naming the variable when a value is bad. The defaults run the",
        "local stack untouched. `tally up` passes its environment to every process it starts.",
        "",
        "This file is generated by `tally config docs`; a test fails when it is stale.",
    ]
    groups: dict[str, list[Var]] = {}
    for var in VARIABLES:
        groups.setdefault(var.group, []).append(var)
    for group, items in groups.items():
        out += ["", f"## {group}", "", "| variable | default | meaning |", "| --- | --- | --- |"]
        for var in items:
            default = f"`{var.default}`" if var.default else "(empty)"
            out.append(f"| `{var.env}` | {default} | {var.doc} |")
    return "\n".join(out) + "\n"
