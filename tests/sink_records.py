"""Records for the sink's tests, produced to the real broker with the project's codec:
enriched pageview batches, window aggregates consistent with them, product events,
drop counters and bad rows, plus a few poison records."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from confluent_kafka import Producer
from tally.schemas.codec import default_codec

from tally.config import Settings
from tally.kafka import producer_config
from tests.stream_support import expected_sessions

DAY_MS = 86_400_000


def day_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def pageview(event_id: str, ts: int, site: str, path: str, visitor: int, source: str = "direct") -> dict:
    return {"event_id": event_id, "received_at": ts, "site": site, "hostname": site, "path": path,
            "event": "pageview", "visitor_id": visitor, "referrer_host": "" if source == "direct" else "www.google.com",
            "referrer_source": source, "utm_source": None, "utm_medium": None, "utm_campaign": None,
            "browser": "Firefox", "os": "Linux", "device": "desktop", "user_agent": None, "props": {}}


@dataclass
class Sent:
    """What a test produced, to compare with what ClickHouse holds."""

    event_ids: set[str] = field(default_factory=set)
    # (site, day, stream partition) -> [pageviews, set of visitors]
    cells: dict[tuple[str, date, int], list] = field(default_factory=lambda: defaultdict(lambda: [0, set()]))
    # (site, day, path, stream partition) -> [pageviews, set of visitors]
    path_cells: dict[tuple[str, date, str, int], list] = field(default_factory=lambda: defaultdict(lambda: [0, set()]))
    drops: int = 0
    # stream partition -> (site, visitor, received_at ms, is_pageview, path): for the session windows
    events: dict[int, list[tuple]] = field(default_factory=lambda: defaultdict(list))

    def add(self, site: str, d: date, path: str, partition: int, visitor: int, event_id: str, ts: int = 0) -> None:
        self.event_ids.add(event_id)
        self.events[partition].append((site, visitor, ts, True, path))
        for entry in (self.cells[(site, d, partition)], self.path_cells[(site, d, path, partition)]):
            entry[0] += 1
            entry[1].add(visitor)

    def site_days(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(site, 'YYYY-MM-DD') -> (pageviews, visitors)."""
        out: dict[tuple[str, str], list] = defaultdict(lambda: [0, set()])
        for (site, d, _), (count, visitors) in self.cells.items():
            out[(site, d.isoformat())][0] += count
            out[(site, d.isoformat())][1] |= visitors
        return {k: (c, len(v)) for k, (c, v) in out.items()}


class Records:
    def __init__(self, settings: Settings, partitions: int) -> None:
        self.s = settings
        self.partitions = partitions
        self.codec = default_codec()
        self.producer = Producer(producer_config(settings))
        self.sent = Sent()
        self._offset = 0

    def produce(self, topic: str, value: bytes, partition: int | None = None, key: bytes | None = None) -> None:
        kwargs = {"partition": partition} if partition is not None else {}
        self.producer.produce(self.s.topic(topic), value=value, key=key, **kwargs)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def pageviews(self, n: int, days: list[date], sites: tuple[str, ...] = ("a.test", "b.test"),
                  per_batch: int = 25) -> None:
        """n pageviews spread over sites and days; each visitor lives in one partition
        (partition = visitor % partitions), as the stream guarantees."""
        by_partition: dict[int, list[dict]] = defaultdict(list)
        for i in range(n):
            site = sites[i % len(sites)]
            d = days[(i // len(sites)) % len(days)]
            visitor = 1000 + (i * 7) % 97
            eid = str(uuid.uuid4())
            ts = day_ms(d) + (i * 9973) % DAY_MS
            p, path = visitor % self.partitions, f"/page/{i % 6}"
            by_partition[p].append(pageview(eid, ts, site, path, visitor, "search" if i % 3 == 0 else "direct"))
            self.sent.add(site, d, path, p, visitor, eid, ts)
        for p, items in by_partition.items():
            for start in range(0, len(items), per_batch):
                self._offset += 1
                batch = {"source_partition": p, "source_offset": self._offset, "items": items[start:start + per_batch]}
                self.produce("pageviews.enriched", self.codec.encode("pageview_batch", batch), partition=p)

    def aggregates_from_sent(self, version: int = 1, skew: int = 0) -> None:
        """site_day totals per stream partition matching what was sent; `skew` adds
        that many pageviews to one cell, to create drift."""
        for n, ((site, d, p), (count, visitors)) in enumerate(sorted(self.sent.cells.items())):
            record = {"kind": "site_day", "scope": site, "dimension": "", "window_start": day_ms(d),
                      "window_end": day_ms(d) + DAY_MS, "partition": p,
                      "count": count + (skew if n == 0 else 0), "uniques": len(visitors), "version": version}
            key = f"site_day|{site}||{day_ms(d)}|{p}".encode()
            self.produce("aggregates", self.codec.encode("window_aggregate", record), key=key)
        for (site, d, path, p), (count, visitors) in sorted(self.sent.path_cells.items()):
            record = {"kind": "path_day", "scope": site, "dimension": path, "window_start": day_ms(d),
                      "window_end": day_ms(d) + DAY_MS, "partition": p, "count": count,
                      "uniques": len(visitors), "version": version}
            key = f"path_day|{site}|{path}|{day_ms(d)}|{p}".encode()
            self.produce("aggregates", self.codec.encode("window_aggregate", record), key=key)
        # the session windows the stream would emit for these pageviews (30-minute visits)
        for p, events in sorted(self.sent.events.items()):
            for (kind, site, dim, start), count in sorted(expected_sessions(events).items()):
                end = start + (DAY_MS if kind.endswith("_day") else 3600_000)
                record = {"kind": kind, "scope": site, "dimension": dim, "window_start": start, "window_end": end,
                          "partition": p, "count": count, "uniques": 0, "version": version}
                key = f"{kind}|{site}|{dim}|{start}|{p}".encode()
                self.produce("aggregates", self.codec.encode("window_aggregate", record), key=key)

    def product_event(self, family_event: str, feature_area: str, tenant: str, workspace: str, when: datetime,
                      metadata: dict) -> None:
        record = {"event_id": str(uuid.uuid4()), "event": family_event, "feature_area": feature_area,
                  "tenant_id": tenant, "workspace_id": workspace, "actor_type": "user", "actor_id": "u1",
                  "subject_type": "", "subject_id": None, "occurred_at": when, "app": "test", "metadata": metadata}
        self.produce("product.events", self.codec.encode("product_event", record), key=tenant.encode())

    def adoption_events(self, reports: int, workspaces: int, apart: timedelta) -> datetime:
        """`reports` report.created events of tenant t1 over `workspaces` workspaces, `apart`
        from each other back from now, and one onboarding checkpoint of tenant t2; returns now."""
        now = datetime.now(UTC)
        for i in range(reports):
            self.product_event("report.created", "report", "t1", f"w{i % workspaces}", now - i * apart,
                               {"report_type": "permission_posture", "format": "pdf"})
        self.product_event("onboarding.checkpoint_completed", "onboarding", "t2", "w9", now,
                           {"checkpoint": "connection_verified", "resumed": True, "step_index": 2})
        return now

    def drop(self, site: str, d: date, reason: str, count: int) -> bytes:
        """Send one worker drop count from a new input record; returns the record's value."""
        self.sent.drops += count
        self._offset += 1
        record = {"site": site, "day": d, "reason": reason, "count": count, "component": "worker",
                  "source_partition": 0, "source_offset": self._offset}
        value = self.codec.encode("drop_count", record)
        self.produce("drops", value, key=site.encode())
        return value

    def bad_row(self, reason: str) -> None:
        record = {"reason": reason, "detail": "test", "component": "worker", "source_topic": "x",
                  "source_partition": 0, "source_offset": 1, "original": b"\x00\x01", "failed_at": datetime.now(UTC)}
        self.produce("bad-rows", self.codec.encode("bad_row", record))


def recent_days(n: int) -> list[date]:
    today = datetime.now(UTC).date()
    return [today - timedelta(days=i) for i in range(n)]
