"""Settings: every TALLY_* environment variable, read once and validated at start.

`VARIABLES` is the single source of truth: `Settings.from_env()` parses it and
`tally config docs` renders docs/configuration.md from it, so the docs cannot
drift from the code.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


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


def _optional_int(lo: int, hi: int | None = None) -> Callable[[str], int | None]:
    """An integer, or None when empty (meaning: derived, see the variable's doc)."""
    parse_int = _int(lo, hi)
    return lambda raw: parse_int(raw) if raw.strip() else None


def _float(lo: float = 0.0, hi: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if value < lo:
            raise ValueError(f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"must be <= {hi}, got {value}")
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


def _names(raw: str) -> tuple[str, ...]:
    """Comma-separated names or glob patterns, case kept (query parameter names)."""
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _regexes(raw: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for part in raw.split():
        try:
            out.append(re.compile(part))
        except re.error as exc:
            raise ValueError(f"{part!r} is not a regular expression ({exc})") from None
    return tuple(out)


def _props_allowlist(raw: str) -> dict[str, frozenset[str]]:
    """`site:key,site:key,*:key` as {site: keys}."""
    out: dict[str, set[str]] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        site, sep, key = part.partition(":")
        if not sep or not site.strip() or not key.strip():
            raise ValueError(f"expected site:key (or *:key), got {part!r}")
        out.setdefault(site.strip().lower(), set()).add(key.strip())
    return {site: frozenset(keys) for site, keys in out.items()}


def _edge_secret(raw: str) -> str:
    """Empty (a generated key file), or at least 32 bytes that look random."""
    v = raw.strip()
    if v and (len(v.encode()) < 32 or len(set(v)) < 16):
        raise ValueError("needs at least 32 random bytes, e.g. the output of `openssl rand -base64 32` "
                         f"(got {len(v.encode())} bytes with {len(set(v))} distinct characters)")
    return v


def _url(raw: str) -> str:
    v = raw.strip()
    if v and not v.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {raw!r}")
    return v.rstrip("/")


def _credentials(url: str, replacement: str | None) -> str:
    parts = urlsplit(url) if url.startswith(("http://", "https://")) else None
    if parts is None or parts.password is None:
        return url
    userinfo = parts.username or ""
    if replacement is not None:
        userinfo += ":" + replacement
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def mask_password(url: str) -> str:
    """The URL with its password shown as ***, for messages and status output."""
    return _credentials(url, "***")


def strip_password(url: str) -> str:
    """The URL without its password, for files."""
    return _credentials(url, None)


def _bootstrap(raw: str) -> str:
    """host:port[,host:port...], normalised to no spaces (every client reads that form)."""
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    for part in parts:
        host, sep, port = part.rpartition(":")
        if ";" in part or any(c.isspace() for c in part):
            raise ValueError(f"separate hosts with commas (host:port,host:port), got {raw!r}")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected host:port[,host:port...], got {raw!r}")
    return ",".join(parts)


@dataclass(frozen=True)
class Var:
    env: str
    attr: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    group: str
    secret: bool = False  # never printed, logged or written to run/env.json


def replication_defaults(count: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a local Kafka cluster of `count` nodes."""
    replicas = min(3, count)
    return replicas, 2 if replicas >= 3 else 1


VARIABLES: tuple[Var, ...] = (
    # Local stack
    Var("TALLY_STATE_DIR", "state_dir", ".tally", _str, "Directory for all local state: broker log dirs, embedded ClickHouse, salts spool, PID files and logs.", "Local stack"),
    Var("TALLY_BROKER", "broker", "kafka", _choice("kafka", "tansu"), "Which local broker `tally up` starts: `kafka` (Apache Kafka in KRaft mode, persistent, supports transactions) or `tansu` (lighter, memory-only: a restart loses every topic; needs the `tansu` extra).", "Local stack"),
    Var("TALLY_KAFKA_BOOTSTRAP", "kafka_bootstrap", "", _bootstrap, "Bootstrap servers of an external Kafka cluster, comma-separated (`host:port,host:port`). When set, no local broker is started.", "Local stack"),
    Var("TALLY_KAFKA_BROKERS", "kafka_brokers", "1", _int(1, 9), "Nodes of the local Kafka cluster `tally up` starts (KRaft; each node is a broker and a controller). `3` gives a quorum that keeps running with one node down, with topics replicated 3 times and `min.insync.replicas` 2. Node i listens on TALLY_BROKER_PORT + 2(i-1) (and the next port for the quorum); a cluster of N > 1 nodes keeps its data in `<state>/kafka-N/`, so changing N starts a new, empty cluster.", "Local stack"),
    Var("TALLY_BROKER_PORT", "broker_port", "9092", _int(1, 65535), "Port of the local broker's client listener (127.0.0.1); the first node's, with TALLY_KAFKA_BROKERS > 1.", "Local stack"),
    Var("TALLY_BROKER_HEAP_MB", "broker_heap_mb", "512", _int(128), "Java heap of each local Kafka node, in MiB.", "Local stack"),
    Var("TALLY_CLICKHOUSE_URL", "clickhouse_url", "", _url, "URL of a ClickHouse server (e.g. http://user:pass@host:8123/db). Empty: embedded ClickHouse (chDB) under the state directory, owned by the sink.", "Local stack"),
    Var("TALLY_QUERY_PORT", "query_port", "8124", _int(1, 65535), "Port of the sink's HTTP endpoint: `/healthz` and `/metrics`, and analysts' SQL only when TALLY_QUERY_TOKEN is set. `tally query` reaches the embedded warehouse through the sink's Unix socket `<state>/run/warehouse.sock`, not through this port.", "Local stack"),
    Var("TALLY_QUERY_HOST", "query_host", "127.0.0.1", _str, "Address the sink's HTTP endpoint listens on.", "Local stack"),
    Var("TALLY_LOG_LEVEL", "log_level", "info", _choice("debug", "info", "warning", "error"), "Log level of every component.", "Local stack"),
    # Kafka
    Var("TALLY_TOPIC_PREFIX", "topic_prefix", "tally.", _str, "Prefix of every topic name; lets several stacks share one cluster.", "Kafka"),
    Var("TALLY_TOPIC_PARTITIONS", "topic_partitions", "12", _int(1, 1024), "Partitions of the data topics. Stream workers scale up to this many processes.", "Kafka"),
    Var("TALLY_TOPIC_REPLICATION_FACTOR", "topic_replication_factor", "", _optional_int(1, 16), "Replicas of every topic Tally creates (the pipeline's topics, the worker's changelogs and Faust's internal topic). Empty: min(3, TALLY_KAFKA_BROKERS) on the cluster `tally up` starts, the cluster's `default.replication.factor` on an external one. An existing topic with another replication factor is reported at start (Kafka cannot change it through a config).", "Kafka"),
    Var("TALLY_TOPIC_MIN_INSYNC_REPLICAS", "topic_min_insync_replicas", "", _optional_int(1, 16), "`min.insync.replicas` of every topic Tally creates: with acks=all (every Tally producer) a write is acknowledged only once this many replicas hold it, and refused while fewer are in sync. Applied to existing topics at start. Empty: 2 on a local cluster of 3 or more nodes, else 1; the cluster's default on an external one.", "Kafka"),
    Var("TALLY_SCHEMA_REGISTRY_URL", "schema_registry_url", "", _url, "Confluent-compatible schema registry. When set, records use the Confluent wire format; otherwise Avro single-object encoding.", "Kafka"),
    # Product SDK (tally.producers.sdk), read by the applications that embed it
    Var("TALLY_DISABLED", "disabled", "0", _bool, "Opt-out: `1` turns the product SDK and the request middleware into no-ops (nothing is validated, queued or sent).", "Product SDK"),
    Var("TALLY_SDK_APP", "sdk_app", "", _str, "Name of the publishing application, stored with every product event.", "Product SDK"),
    Var("TALLY_SDK_STRICT", "sdk_strict", "0", _bool, "`1`: track() raises on an event the catalog rejects (for tests and development). `0` (production): the event is dropped and counted by reason.", "Product SDK"),
    Var("TALLY_SDK_QUEUE_EVENTS", "sdk_queue_events", "100000", _int(1, 10_000_000), "Most events the SDK holds in memory while they wait for the broker; beyond it, events are dropped (reason queue_full).", "Product SDK"),
    Var("TALLY_SDK_MAX_BLOCK_MS", "sdk_max_block_ms", "0", _int(0, 60_000), "Longest time track() waits for queue space before it drops the event. 0: never wait.", "Product SDK"),
    Var("TALLY_SDK_DELIVERY_TIMEOUT_MS", "sdk_delivery_timeout_ms", "30000", _int(1000), "An event not acknowledged by the broker within this time is dropped (reason delivery_failed).", "Product SDK"),
    Var("TALLY_SDK_EXIT_FLUSH_SECONDS", "sdk_exit_flush_seconds", "5", _float(0.0), "How long interpreter exit waits for queued events to be delivered.", "Product SDK"),
    Var("TALLY_SDK_PROFILE", "sdk_profile", "hosted", _choice("hosted", "on_premise"), "Collection profile. `hosted`: ids as the application gives them. `on_premise`: actor and subject ids are replaced by keyed pseudonyms (the key is generated once in the state directory, mode 0600, and never leaves the installation) and per-request slow/failed API events are off (the per-minute route rollups stay).", "Product SDK"),
    Var("TALLY_SDK_SLOW_OPERATION_MS", "sdk_slow_operation_ms", "500", _int(1, 3_600_000), "track_performance(): an operation slower than this emits service_operation.slow.", "Product SDK"),
    Var("TALLY_SDK_SLOW_REQUEST_MS", "sdk_slow_request_ms", "1000", _int(1, 3_600_000), "Request middleware: a request slower than this emits api.request_slow.", "Product SDK"),
    Var("TALLY_SDK_VERY_SLOW_REQUEST_MS", "sdk_very_slow_request_ms", "2000", _int(1, 3_600_000), "Request middleware: a request slower than this also emits api.request_very_slow.", "Product SDK"),
    # Collector
    Var("TALLY_COLLECTOR_HOST", "collector_host", "127.0.0.1", _str, "Address the collector listens on.", "Collector"),
    Var("TALLY_COLLECTOR_PORT", "collector_port", "8000", _int(1, 65535), "Port the collector listens on.", "Collector"),
    Var("TALLY_ALLOWED_SITES", "allowed_sites", "localhost,example.com", _csv, "Comma-separated sites (hostnames) the collector accepts beacons for. Empty rejects everything.", "Collector"),
    Var("TALLY_TRUSTED_PROXIES", "trusted_proxies", "", _cidrs, "Comma-separated IPs/CIDRs of reverse proxies whose X-Forwarded-For is believed.", "Collector"),
    Var("TALLY_EDGE_SECRET", "edge_secret", "", _edge_secret, "Secret key mixed into the collector's IP pseudonym with the per-period edge keys (at least 32 random bytes, e.g. `openssl rand -base64 32`). Empty: generated once and kept in the state directory (mode 0600).", "Collector", secret=True),
    Var("TALLY_QUERY_PARAMS", "query_params", "utm_*", _names, "Query parameters a beacon's path keeps (comma-separated names or glob patterns); every other parameter, and any value that looks like personal data or a secret, is removed at the collector.", "Collector"),
    Var("TALLY_PATH_REDACT_PATTERNS", "path_redact_patterns", "", _regexes, "Extra regular expressions (whitespace-separated): a path segment or query value matching one becomes `:redacted`. Emails, UUIDs, long hex/base64 tokens, secrets, card numbers, IBANs, IP literals and phone numbers are always redacted.", "Collector"),
    Var("TALLY_PROPS_ALLOWLIST", "props_allowlist", "", _props_allowlist, "Custom-event props kept, as `site:key` pairs (comma-separated; `*:key` for every site). Other props, and values over 100 characters or that look like personal data, are dropped and counted (prop_not_allowed, prop_unsafe_value). Empty: no props are kept.", "Collector"),
    Var("TALLY_CORS_ORIGINS", "cors_origins", "*", _csv, "Origins allowed to send beacons from browsers (Access-Control-Allow-Origin): `*` for any, or comma-separated origins such as https://example.com.", "Collector"),
    Var("TALLY_HONOR_GPC", "honor_gpc", "true", _bool, "Drop beacons (answering 204) from browsers that send `Sec-GPC: 1`.", "Collector"),
    Var("TALLY_HONOR_DNT", "honor_dnt", "false", _bool, "Drop beacons (answering 204) from browsers that send `DNT: 1`.", "Collector"),
    Var("TALLY_DROP_EMPTY_UA", "drop_empty_ua", "false", _bool, "Drop beacons that have no User-Agent header (the collector answers 204; the stream worker drops those already in Kafka), counted as empty_user_agent. Off: they are recorded, as other pageviews.", "Collector"),
    Var("TALLY_RATE_LIMIT_PER_SECOND", "rate_limit_per_second", "20", _float(0.0), "Sustained beacons per second per client (token bucket, per collector worker; an IPv6 client is its /64). 0 switches the limit off.", "Collector"),
    Var("TALLY_RATE_LIMIT_BURST", "rate_limit_burst", "200", _int(1), "Bucket size of the per-client rate limit: beacons a client may send at once.", "Collector"),
    Var("TALLY_SPOOL_MAX_MB", "spool_max_mb", "256", _int(1), "Largest size of each collector worker's on-disk spool (used while the broker is unreachable). When full the collector answers 503.", "Collector"),
    Var("TALLY_SPOOL_AFTER_MS", "spool_after_ms", "1000", _int(50, 60000), "How long a beacon waits for the Kafka acknowledgement before it is written to the spool and answered.", "Collector"),
    Var("TALLY_COLLECTOR_BATCH_MS", "collector_batch_ms", "20", _float(0.0, 1000.0), "Longest a beacon waits for others to share its Kafka record (its answer waits as long). It waits only while a connection without a request in progress could bring one, and a record of 64 beacons goes at once, so a closed-loop client is not held back. Fewer, larger records cost the broker and the stream worker less: their cost is mostly per record. 0: a record per event-loop pass (docs/collector.md).", "Collector"),
    Var("TALLY_COLLECTOR_WORKERS", "collector_workers", "1", _int(1, 64), "Collector processes sharing the port (SO_REUSEPORT); `tally collector --workers` overrides it.", "Collector"),
    Var("TALLY_TEST_COLLECTOR_CRASH_BEFORE_REPLAY_ACK", "test_collector_crash_before_replay_ack", "0", _bool, "Test hook: the collector kills itself (SIGKILL) once Kafka acknowledged its first replayed batches from the spool, before it records them as done there (so its next start replays them again). Never set in production.", "Collector"),
    Var("TALLY_DROPS_FLUSH_SECONDS", "drops_flush_seconds", "10", _float(0.1), "How often the collector sends its counts of edge drops to the drops topic.", "Collector"),
    # Streams
    Var("TALLY_APP_ID", "app_id", "tally-stream", _str, "Faust application id: stream workers with the same id share the partitions.", "Streams"),
    Var("TALLY_SALT_PERIOD", "salt_period", "day", _choice("day", "month"), "Visitor-salt rotation period. `month` allows monthly unique visitors; `day` gives stronger privacy.", "Streams"),
    Var("TALLY_SALT_GRACE_HOURS", "salt_grace_hours", "48", _int(1), "How long a period's salt outlives the period (for late events). Then it is tombstoned and compacted away: old visitor hashes can no longer be re-derived.", "Streams"),
    Var("TALLY_KEY_SHRED_SECONDS", "key_shred_seconds", "3600", _int(1, 86400), "How soon an expired salt or edge key leaves the disk: the `salts` and `edge-keys` topics roll their segments, force compaction and drop tombstones after this long (then the log cleaner's pass and at most 60 s of file deletion delay). Lower values mean more, smaller segments.", "Streams"),
    Var("TALLY_DEDUP_WINDOW_SECONDS", "dedup_window_seconds", "21600", _int(0), "How long the stream worker remembers the event ids it counted, by the event's time (to the hour), to count an event sent twice once (a collector's spool replay, an SDK's resend). A repeat older than this is counted again. At most TALLY_ALLOWED_LATENESS_HOURS (the default is capped by it); each id held costs 8-17 bytes (docs/reliability.md).", "Streams"),
    Var("TALLY_ALLOWED_LATENESS_HOURS", "allowed_lateness_hours", "48", _int(0), "Events older than this (by the worker's clock) go to bad rows as too_late; younger late events update their window and re-emit it. Capped by TALLY_SALT_GRACE_HOURS.", "Streams"),
    Var("TALLY_KEEP_USER_AGENT", "keep_user_agent", "false", _bool, "Keep the raw user agent in enriched pageviews (off: only browser, OS and device class are kept).", "Streams"),
    Var("TALLY_REFERRER_SPAM_FILE", "referrer_spam_file", "", _str, "File of referrer-spam domains, one per line (e.g. Matomo's referrer-spam-list spammers.txt). Pageviews from these referrers (and their subdomains) are dropped with reason referrer_spam.", "Streams"),
    Var("TALLY_PROCESSING_GUARANTEE", "processing_guarantee", "at_least_once", _choice("at_least_once", "exactly_once"), "Faust processing guarantee of the stream worker. Counts are exact with the default (window state skips replays, see docs/streams.md); `exactly_once` adds Kafka transactions (Apache Kafka only, not Tansu; experimental: slower, not covered by the crash test).", "Streams"),
    Var("TALLY_CLOCK_OFFSET_SECONDS", "clock_offset_seconds", "0", _int(), "Shifts the clocks of the stream worker (salt rotation, lateness) and the collector (edge-key periods), and their view of the broker's clock when expiring keys. For tests and replays; leave 0 in production.", "Streams"),
    Var("TALLY_SESSION_TIMEOUT_SECONDS", "session_timeout_seconds", "1800", _int(0), "A visitor's events less than this apart are one session (visit); a session also ends at the salt-period boundary. 0 switches sessions off (no visit aggregates, no session rows).", "Streams"),
    Var("TALLY_SESSION_FLUSH_SECONDS", "session_flush_seconds", "10", _float(0.0), "How often a stream worker emits the sessions that changed (session rows, and the totals of the visit, bounce, duration, entry and exit page windows), at the first totals flush after this long. A visit that changes several times in between is written once. Lower: fresher visit figures, more rows and worker CPU. The state, not the rows, is the truth: a restarted worker re-emits every session.", "Streams"),
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
    Var("TALLY_BAD_ROWS_RETENTION_DAYS", "bad_rows_retention_days", "7", _int(1), "TTL of bad rows in ClickHouse and of the bad-rows topic, in days.", "Sink"),
    Var("TALLY_ROLLUP_CHECK_SECONDS", "rollup_check_seconds", "60", _float(0.1), "How often the sink checks the daily breakdown rollups (`daily_stats`) against the raw rows of recent days and computes the days that are over or changed (docs/api.md).", "Sink"),
    # Analyst access (docs/api.md, docs/analysts.md)
    Var("TALLY_ANALYST_MAX_SECONDS", "analyst_max_seconds", "30", _int(1, 3600), "Longest run time of one analyst query (`tally query`, the Stats API): ClickHouse's max_execution_time, enforced by the engine.", "Analyst access"),
    Var("TALLY_ANALYST_MAX_MEMORY_MB", "analyst_max_memory_mb", "1024", _int(16), "Most memory one analyst query may use (max_memory_usage).", "Analyst access"),
    Var("TALLY_ANALYST_MAX_ROWS_TO_READ", "analyst_max_rows_to_read", "1000000000", _int(1000), "Most rows one analyst query may read (max_rows_to_read).", "Analyst access"),
    Var("TALLY_ANALYST_MAX_RESULT_ROWS", "analyst_max_result_rows", "1000000", _int(1), "Most rows one analyst query may return (max_result_rows).", "Analyst access"),
    Var("TALLY_ANALYST_MAX_RESULT_MB", "analyst_max_result_mb", "100", _int(1), "Most bytes one analyst query may return, in MiB (max_result_bytes, and the size of the answer the sink sends).", "Analyst access"),
    Var("TALLY_ANALYST_CONCURRENCY", "analyst_concurrency", "2", _int(1, 64), "Analyst queries the sink runs at once, each on its own read-only session in its own thread (ingestion never waits for them). More wait in line; past 8 per slot the sink answers 503.", "Analyst access"),
    Var("TALLY_ANALYST_THREADS", "analyst_threads", "2", _int(1, 64), "Threads one analyst query may use (max_threads). The sink runs analyst queries at a lower CPU priority than ingestion.", "Analyst access"),
    Var("TALLY_QUERY_TOKEN", "query_token", "", _str, "Bearer token that opens the sink's TCP endpoint to analysts' SQL (`POST /v1/sql`, guarded like the socket). Empty (the default): no SQL on TCP. At least 32 characters.", "Analyst access", secret=True),
    Var("TALLY_QUERY_ALLOWED_HOSTS", "query_allowed_hosts", "localhost,127.0.0.1,[::1]", _csv, "Host header values the sink's TCP SQL endpoint accepts (DNS-rebinding guard); requests carrying an Origin header are refused.", "Analyst access"),
    Var("TALLY_ANALYST_CLICKHOUSE_URL", "analyst_clickhouse_url", "", _url, "Server mode: URL of the read-only analyst user (`tally query`, `tally reconcile`). `tally migrate` creates that user, with the analyst limits and SELECT on the analyst tables only; the sink's credentials are never used for reading.", "Analyst access"),
    # Dashboard and Stats API
    Var("TALLY_DASHBOARD_HOST", "dashboard_host", "127.0.0.1", _str, "Address `tally dashboard` (the Stats API) listens on.", "Dashboard and API"),
    Var("TALLY_DASHBOARD_PORT", "dashboard_port", "8001", _int(1, 65535), "Port `tally dashboard` listens on.", "Dashboard and API"),
    Var("TALLY_DASHBOARD_ALLOWED_HOSTS", "dashboard_allowed_hosts", "localhost,127.0.0.1,[::1]", _csv, "Host header values the dashboard answers (DNS-rebinding guard); add the public hostname when it is exposed.", "Dashboard and API"),
    Var("TALLY_DASHBOARD_CLICKHOUSE_URL", "dashboard_clickhouse_url", "", _url, "Server mode: URL of the dashboard's read-only user (the analyst grants plus reading `api_keys`, `dashboard_users` and `share_links`). `tally migrate` creates it.", "Dashboard and API"),
    Var("TALLY_API_RATE_LIMIT_PER_HOUR", "api_rate_limit_per_hour", "600", _int(1), "Requests per hour each API key may make (token bucket); beyond it the API answers 429.", "Dashboard and API"),
    Var("TALLY_API_RATE_LIMIT_BURST", "api_rate_limit_burst", "60", _int(1), "Requests an API key may make at once before the hourly rate applies.", "Dashboard and API"),
    Var("TALLY_TEST_SINK_CRASH_AFTER_INSERT", "test_sink_crash_after_insert", "0", _bool, "Test hook: the sink kills itself (SIGKILL) after its first insert and before committing the offsets. Never set in production.", "Sink"),
    Var("TALLY_TEST_SINK_OUTAGE_FILE", "test_sink_outage_file", "", _str, "Test hook: while this file exists, every sink insert fails as if ClickHouse were unreachable. Never set in production.", "Sink"),
)


@dataclass(frozen=True)
class Settings:
    state_dir: Path = Path(".tally")
    broker: str = "kafka"
    kafka_bootstrap: str = ""
    kafka_brokers: int = 1
    broker_port: int = 9092
    broker_heap_mb: int = 512
    clickhouse_url: str = ""
    query_port: int = 8124
    query_host: str = "127.0.0.1"
    log_level: str = "info"
    topic_prefix: str = "tally."
    topic_partitions: int = 12
    topic_replication_factor: int | None = None
    topic_min_insync_replicas: int | None = None
    schema_registry_url: str = ""
    disabled: bool = False
    sdk_app: str = ""
    sdk_strict: bool = False
    sdk_queue_events: int = 100000
    sdk_max_block_ms: int = 0
    sdk_delivery_timeout_ms: int = 30000
    sdk_exit_flush_seconds: float = 5.0
    sdk_profile: str = "hosted"
    sdk_slow_operation_ms: int = 500
    sdk_slow_request_ms: int = 1000
    sdk_very_slow_request_ms: int = 2000
    collector_host: str = "127.0.0.1"
    collector_port: int = 8000
    allowed_sites: tuple[str, ...] = ("localhost", "example.com")
    trusted_proxies: tuple[Any, ...] = ()
    edge_secret: str = ""
    query_params: tuple[str, ...] = ("utm_*",)
    path_redact_patterns: tuple[Any, ...] = ()
    props_allowlist: Mapping[str, frozenset[str]] = field(default_factory=dict)
    cors_origins: tuple[str, ...] = ("*",)
    honor_gpc: bool = True
    honor_dnt: bool = False
    drop_empty_ua: bool = False
    rate_limit_per_second: float = 20.0
    rate_limit_burst: int = 200
    spool_max_mb: int = 256
    spool_after_ms: int = 1000
    collector_batch_ms: float = 20.0
    collector_workers: int = 1
    test_collector_crash_before_replay_ack: bool = False
    drops_flush_seconds: float = 10.0
    app_id: str = "tally-stream"
    salt_period: str = "day"
    salt_grace_hours: int = 48
    key_shred_seconds: int = 3600
    allowed_lateness_hours: int = 48
    dedup_window_seconds: int = 21600
    keep_user_agent: bool = False
    referrer_spam_file: str = ""
    clock_offset_seconds: int = 0
    processing_guarantee: str = "at_least_once"
    session_timeout_seconds: int = 1800
    session_flush_seconds: float = 10.0
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
    bad_rows_retention_days: int = 7
    rollup_check_seconds: float = 60.0
    analyst_max_seconds: int = 30
    analyst_max_memory_mb: int = 1024
    analyst_max_rows_to_read: int = 1_000_000_000
    analyst_max_result_rows: int = 1_000_000
    analyst_max_result_mb: int = 100
    analyst_concurrency: int = 2
    analyst_threads: int = 2
    query_token: str = ""
    query_allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    analyst_clickhouse_url: str = ""
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8001
    dashboard_allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    dashboard_clickhouse_url: str = ""
    api_rate_limit_per_hour: int = 600
    api_rate_limit_burst: int = 60
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
        if values["query_token"] and len(values["query_token"]) < 32:
            raise SettingsError("TALLY_QUERY_TOKEN: must be at least 32 characters (it opens analysts' SQL on TCP)")
        tally_env = {k: v for k, v in environ.items() if k.startswith("TALLY_")}
        settings = cls(**values, env=tally_env)
        settings._check_replication()
        # Left at its default, the window is capped by a shorter lateness (streams/stages.Clock).
        if "TALLY_DEDUP_WINDOW_SECONDS" in environ and settings.dedup_window_seconds > settings.allowed_lateness_hours * 3600:
            raise SettingsError(f"TALLY_DEDUP_WINDOW_SECONDS: {settings.dedup_window_seconds} is longer than "
                                f"TALLY_ALLOWED_LATENESS_HOURS ({settings.allowed_lateness_hours} h); ids are "
                                "never needed after their windows close")
        return settings

    def _check_replication(self) -> None:
        if self.local_broker and self.kafka_brokers > 1 and self.broker != "kafka":
            raise SettingsError(f"TALLY_KAFKA_BROKERS: a cluster of {self.kafka_brokers} nodes needs "
                                f"TALLY_BROKER=kafka, got {self.broker!r}")
        replicas, min_isr = self.replication_factor, self.min_insync_replicas
        if self.local_broker and replicas is not None and replicas > self.kafka_brokers:
            raise SettingsError(f"TALLY_TOPIC_REPLICATION_FACTOR: {replicas} replicas need as many "
                                f"brokers, but TALLY_KAFKA_BROKERS is {self.kafka_brokers}")
        if replicas is not None and min_isr is not None and min_isr > replicas:
            raise SettingsError(f"TALLY_TOPIC_MIN_INSYNC_REPLICAS: {min_isr} is more than the "
                                f"{replicas} replicas of each topic; every acks=all write would be refused")

    def public_env(self) -> dict[str, str]:
        """The TALLY_* variables without secrets: secret variables left out, passwords
        removed from URLs. What may be written to a file or printed."""
        secret = {v.env for v in VARIABLES if v.secret}
        return {k: strip_password(v) for k, v in self.env.items() if k not in secret}

    def public_values(self) -> dict[str, str]:
        """Every setting as text for `tally config check`, secrets masked."""
        secret = {v.attr for v in VARIABLES if v.secret}
        out = {}
        for f in fields(self):
            if f.name == "env":
                continue
            value = getattr(self, f.name)
            out[f.name] = ("***" if value else "") if f.name in secret else mask_password(str(value))
        return out

    @property
    def bootstrap(self) -> str:
        """Where clients connect: the external cluster, or the local broker(s), as
        host:port[,host:port...]."""
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        return ",".join(f"127.0.0.1:{self.broker_port + 2 * i}" for i in range(self.kafka_brokers))

    @property
    def bootstrap_hosts(self) -> list[str]:
        return self.bootstrap.split(",")

    @property
    def local_kafka(self) -> bool:
        """`tally up` runs Apache Kafka here (whose replication Tally sizes)."""
        return self.local_broker and self.broker == "kafka"

    @property
    def replication_factor(self) -> int | None:
        """Replicas of each topic Tally creates; None: the cluster's default."""
        if self.topic_replication_factor is not None:
            return self.topic_replication_factor
        if self.local_broker:  # Kafka, sized to its nodes; or Tansu, one node
            return replication_defaults(self.kafka_brokers)[0]
        return None

    @property
    def min_insync_replicas(self) -> int | None:
        """min.insync.replicas of each topic Tally creates; None: the cluster's default."""
        if self.topic_min_insync_replicas is not None:
            return self.topic_min_insync_replicas
        if self.local_kafka:
            return replication_defaults(self.kafka_brokers)[1]
        return None

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

    @property
    def socket_path(self) -> Path:
        """The sink's Unix socket: the warehouse's read service in embedded mode (mode 0600)."""
        return self.run_dir / "warehouse.sock"

    @property
    def sql_socket_path(self) -> Path:
        """The sink's framed socket for the dashboard's queries (sinks/sqlsocket.py, mode 0600)."""
        return self.run_dir / "warehouse-sql.sock"

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
