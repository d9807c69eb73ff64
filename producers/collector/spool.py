"""A bounded, append-only, on-disk spool of micro-batches the broker has not acknowledged.

While Kafka is unreachable the collector still answers 2xx, but only after
the beacon's micro-batch is written here and fsync'd. When the broker is back
the batches are replayed in the order they were written, and each replayed
batch is marked done with an ACK record. Nothing is ever rewritten in place:
the spool is a sequence of segment files holding two kinds of records,

    DATA(id, encoded beacon_batch)     ACK(id)

framed as `magic "TS" | kind u8 | id u64 | length u32 | crc32 u32 | payload`.
A segment whose batches are all acknowledged is deleted; when nothing is
pending every segment goes. A torn record at the tail (a crash mid-write) is
cut off on open: its batch was never fsync'd, so it was never answered 2xx.

One process owns a spool directory (flock on `lock`). All methods block on
disk I/O; the forwarder calls them from a single dedicated thread, which also
keeps them strictly ordered.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = struct.Struct("<2sBQII")
MAGIC = b"TS"
DATA, ACK = 1, 2
SEGMENT_BYTES = 8 << 20


class SpoolFull(RuntimeError):
    """The spool has no room for this batch; the collector answers 503."""


class SpoolLocked(RuntimeError):
    """Another process owns this spool directory."""


def _crc(kind: int, entry_id: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<BQ", kind, entry_id)))


def _record(kind: int, entry_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, kind, entry_id, len(payload), _crc(kind, entry_id, payload)) + payload


class Spool:
    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock_fd: int | None = None
        # id -> (segment number, offset of the payload, payload length), in write order
        self._pending: OrderedDict[int, tuple[int, int, int]] = OrderedDict()
        self._unacked: dict[int, set[int]] = {}  # segment number -> pending ids in it
        self._sizes: dict[int, int] = {}  # segment number -> bytes
        self._active = 0
        self._fd: int | None = None
        self._next_id = 1

    # --- lifecycle -----------------------------------------------------------

    def open(self) -> None:
        """Take the directory's lock and recover its state. Raises SpoolLocked."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(f"{self.dir} is used by another process") from None
        self._lock_fd = fd
        for seg in sorted(self._segment_numbers()):
            self._recover(seg)
        self._active = max(self._sizes, default=0)
        self._collect_garbage()
        if self._fd is None:
            self._roll()

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)  # ACK records are written without fsync; keep them on a clean stop
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # --- state ---------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    def has_room(self, nbytes: int = 0) -> bool:
        return self.size_bytes + HEADER.size + nbytes <= self.max_bytes

    def pending_ids(self) -> list[int]:
        return list(self._pending)

    def read(self, entry_id: int) -> bytes:
        seg, offset, length = self._pending[entry_id]
        with open(self._path(seg), "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    # --- writes --------------------------------------------------------------

    def append(self, payloads: list[bytes]) -> list[int | None]:
        """Write DATA records and fsync once; the id of each, or None for each that did not fit.

        Batches are taken in order and the first that does not fit ends the
        write, so what is spooled is always a prefix: replay order stays the
        order of acceptance.
        """
        ids: list[int | None] = []
        chunks: list[bytes] = []
        buffered = 0  # bytes in chunks, not yet written
        used = self.size_bytes
        for payload in payloads:
            need = HEADER.size + len(payload)
            if ids and ids[-1] is None or used + need > self.max_bytes:
                ids.append(None)
                continue
            if self._sizes[self._active] + buffered >= self.segment_bytes:
                self._write(chunks)
                chunks, buffered = [], 0
                self._roll()
            entry_id = self._next_id
            self._next_id += 1
            offset = self._sizes[self._active] + buffered + HEADER.size
            chunks.append(_record(DATA, entry_id, payload))
            buffered += need
            self._pending[entry_id] = (self._active, offset, len(payload))
            self._unacked.setdefault(self._active, set()).add(entry_id)
            used += need
            ids.append(entry_id)
        self._write(chunks)
        assert self._fd is not None
        os.fsync(self._fd)
        return ids

    def ack(self, ids: list[int]) -> None:
        """Mark batches delivered. Not fsync'd: a lost ACK only means a replay whose
        event_ids downstream already knows."""
        known = [i for i in ids if i in self._pending]
        if not known:
            return
        if len(known) == len(self._pending):  # everything delivered: start over empty
            self._pending.clear()
            self._unacked.clear()
            self._reset()
            return
        self._write([_record(ACK, i) for i in known])
        for i in known:
            seg = self._pending.pop(i)[0]
            self._unacked[seg].discard(i)
        self._collect_garbage()

    # --- internals -------------------------------------------------------------

    def _path(self, seg: int) -> Path:
        return self.dir / f"seg-{seg:012d}.log"

    def _segment_numbers(self) -> list[int]:
        out = []
        for p in self.dir.glob("seg-*.log"):
            try:
                out.append(int(p.name[4:-4]))
            except ValueError:
                continue
        return out

    def _write(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        assert self._fd is not None
        data = b"".join(chunks)
        os.write(self._fd, data)
        self._sizes[self._active] += len(data)

    def _roll(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        self._active += 1
        self._fd = os.open(self._path(self._active), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._sizes[self._active] = 0
        self._unacked.setdefault(self._active, set())
        dfd = os.open(self.dir, os.O_RDONLY)  # make the new file's name durable too
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _reset(self) -> None:
        """Delete every segment and open a fresh one."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for seg in list(self._sizes):
            self._path(seg).unlink(missing_ok=True)
        self._sizes.clear()
        self._roll()

    def _collect_garbage(self) -> None:
        for seg in [s for s in self._sizes if s != self._active and not self._unacked.get(s)]:
            self._path(seg).unlink(missing_ok=True)
            del self._sizes[seg]
            self._unacked.pop(seg, None)
        if not self._pending and self._sizes.get(self._active, 0) > 0 and self._fd is not None:
            self._reset()

    def _recover(self, seg: int) -> None:
        path = self._path(seg)
        data = path.read_bytes()
        pos = 0
        while pos + HEADER.size <= len(data):
            magic, kind, entry_id, length, crc = HEADER.unpack_from(data, pos)
            start, end = pos + HEADER.size, pos + HEADER.size + length
            if magic != MAGIC or kind not in (DATA, ACK) or end > len(data) \
                    or _crc(kind, entry_id, data[start:end]) != crc:
                break
            if kind == DATA:
                self._pending[entry_id] = (seg, start, length)
                self._unacked.setdefault(seg, set()).add(entry_id)
            else:
                where = self._pending.pop(entry_id, None)
                if where is not None:
                    self._unacked[where[0]].discard(entry_id)
            self._next_id = max(self._next_id, entry_id + 1)
            pos = end
        if pos < len(data):
            log.warning("spool %s: cutting %d bytes of torn or corrupt records at offset %d",
                        path, len(data) - pos, pos)
            os.truncate(path, pos)
        self._sizes[seg] = pos
        self._unacked.setdefault(seg, set())
        if seg == max(self._segment_numbers()):
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)


def adopt_orphans(mine: Spool, root: Path) -> int:
    """Move the pending batches of unowned spools under root into `mine`; how many moved.

    A worker that is gone (fewer --workers after a restart, or a crash) leaves
    its spool behind; whoever starts next takes it over so nothing waits forever.
    """
    moved = 0
    for other_dir in sorted(p for p in root.glob("w*") if p.is_dir() and p != mine.dir):
        other = Spool(other_dir, max_bytes=1 << 62)
        try:
            other.open()
        except SpoolLocked:
            continue
        try:
            ids = other.pending_ids()
            if not ids:
                continue
            payloads = [other.read(i) for i in ids]
            if mine.size_bytes + sum(len(p) + HEADER.size for p in payloads) > mine.max_bytes:
                log.warning("spool %s: no room to adopt %d batches from %s", mine.dir, len(ids), other_dir)
                continue
            mine.append(payloads)
            other.ack(ids)
            moved += len(ids)
        finally:
            other.close()
    return moved
