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

A write the disk refuses (ENOSPC, EFBIG, EIO, a short write) is rolled back:
the file is cut back to where it was and no id is handed out, so no phantom
entry is replayed later. A record found corrupt on open (a flipped bit) is
skipped and counted (`corrupt`); reading resumes at the next record whose CRC
checks, so the answered batches after it are kept. A record damaged after it was
written (while the process runs) is caught by `read`, which checks the CRC again:
the replay drops that batch, counted, instead of sending its damaged bytes on.

One process owns a spool directory (flock on `lock`). All methods block on
disk I/O; the forwarder calls them from a single dedicated thread, which also
keeps them strictly ordered.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import zlib
from collections import Counter, OrderedDict
from pathlib import Path

from tally.schemas.reasons import DropReason

log = logging.getLogger(__name__)

HEADER = struct.Struct("<2sBQII")
MAGIC = b"TS"
DATA, ACK = 1, 2
SEGMENT_BYTES = 8 << 20


class SpoolFull(RuntimeError):
    """The spool has no room for this batch; the collector answers 503."""


class SpoolCorrupt(RuntimeError):
    """A pending record no longer matches its CRC: its batch is lost."""


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
        self.corrupt: Counter[DropReason] = Counter()  # records skipped on open, by reason

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
        """The payload of a pending entry. Raises SpoolCorrupt if its record was damaged
        since it was written (the CRC covers the header's kind and id too)."""
        seg, offset, length = self._pending[entry_id]
        with open(self._path(seg), "rb") as fh:
            fh.seek(offset - HEADER.size)
            record = fh.read(HEADER.size + length)
        parsed = self._parse(record, 0)
        if parsed is None or parsed[:2] != (DATA, entry_id) or parsed[3] != len(record):
            raise SpoolCorrupt(f"spool {self._path(seg)}: entry {entry_id} at offset {offset} is corrupt")
        return record[HEADER.size:]

    def read_many(self, entry_ids: list[int]) -> list[bytes | SpoolCorrupt]:
        """`read` of each entry, in one call (a replay window costs one trip to the spool's
        thread, not one per batch); a damaged record is its SpoolCorrupt, not a raise."""
        out: list[bytes | SpoolCorrupt] = []
        for entry_id in entry_ids:
            try:
                out.append(self.read(entry_id))
            except SpoolCorrupt as exc:
                out.append(exc)
        return out

    def drop(self, entry_id: int, reason: DropReason) -> None:
        """Give up a pending entry that cannot be replayed (acknowledged as done), counted."""
        self.corrupt[reason] += 1
        self.ack([entry_id])

    # --- writes --------------------------------------------------------------

    def append(self, payloads: list[bytes]) -> list[int | None]:
        """Write DATA records and fsync once; the id of each, or None for each that did not fit.

        Batches are taken in order and the first that does not fit ends the
        write, so what is spooled is always a prefix: replay order stays the
        order of acceptance.
        """
        start = (self._active, self._sizes[self._active], self._next_id)
        ids: list[int | None] = []
        try:
            self._append(payloads, ids)
            assert self._fd is not None
            os.fsync(self._fd)
        except OSError:
            self._rollback(*start, [i for i in ids if i is not None])
            raise
        return ids

    def _append(self, payloads: list[bytes], ids: list[int | None]) -> None:
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

    def _rollback(self, active: int, size: int, next_id: int, added: list[int]) -> None:
        """Undo a failed append: no id it handed out stays pending, in memory or on disk."""
        for entry_id in added:
            seg = self._pending.pop(entry_id)[0]
            self._unacked[seg].discard(entry_id)
        self._next_id = next_id
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for seg in [s for s in self._sizes if s > active]:  # segments this append opened
            self._path(seg).unlink(missing_ok=True)
            del self._sizes[seg]
            self._unacked.pop(seg, None)
        self._active = active
        self._fd = os.open(self._path(active), os.O_WRONLY | os.O_APPEND)
        os.ftruncate(self._fd, size)  # shrinking needs no free space
        os.fsync(self._fd)
        self._sizes[active] = size

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
        try:
            self._write([_record(ACK, i) for i in known])
        except OSError as exc:
            # A full disk must not stop the replay that empties it: the batches are in Kafka,
            # so they are done here all the same. Only a restart before the spool drains
            # would send them again (event_ids the worker already knows).
            log.warning("spool %s: %d acknowledgements not recorded on disk (%s)", self.dir, len(known), exc)
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
        try:
            written = os.write(self._fd, data)
        except OSError:
            os.ftruncate(self._fd, self._sizes[self._active])  # a torn record would sit mid-file
            raise
        if written != len(data):  # the disk filled up part-way
            os.ftruncate(self._fd, self._sizes[self._active])
            raise OSError(errno.ENOSPC, f"short write to the spool ({written} of {len(data)} bytes)")
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
        last = seg == max(self._segment_numbers())
        pos = 0
        while pos + HEADER.size <= len(data):
            end = self._record_at(data, pos, seg)
            if end is not None:
                pos = end
                continue
            # Not a record: resync at the next one whose CRC checks, if there is one.
            nxt = data.find(MAGIC, pos + 1)
            while nxt != -1 and self._parse(data, nxt) is None:
                nxt = data.find(MAGIC, nxt + 1)
            if nxt == -1:
                break
            self.corrupt[DropReason.SPOOL_CORRUPT] += 1
            log.error("spool %s: skipped %d corrupt bytes at offset %d (one batch lost)", path, nxt - pos, pos)
            pos = nxt
        if pos < len(data):
            if self._parse_header_only(data, pos):  # whole record there, CRC wrong: it was fsync'd
                self.corrupt[DropReason.SPOOL_CORRUPT] += 1
                log.error("spool %s: corrupt last record at offset %d (one batch lost)", path, pos)
            else:
                log.warning("spool %s: cutting %d bytes of a torn record at offset %d", path, len(data) - pos, pos)
            if last:
                os.truncate(path, pos)
            else:
                pos = len(data)  # nothing appends here; keep the accounting equal to the file
        self._sizes[seg] = pos
        self._unacked.setdefault(seg, set())
        if last:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    @staticmethod
    def _parse(data: bytes, pos: int) -> tuple[int, int, int, int] | None:
        """(kind, id, payload start, end) of the valid record at pos, or None."""
        if pos + HEADER.size > len(data):
            return None
        magic, kind, entry_id, length, crc = HEADER.unpack_from(data, pos)
        start, end = pos + HEADER.size, pos + HEADER.size + length
        if magic != MAGIC or kind not in (DATA, ACK) or end > len(data) \
                or _crc(kind, entry_id, data[start:end]) != crc:
            return None
        return kind, entry_id, start, end

    @staticmethod
    def _parse_header_only(data: bytes, pos: int) -> bool:
        if pos + HEADER.size > len(data):
            return False
        magic, kind, _, length, _ = HEADER.unpack_from(data, pos)
        return magic == MAGIC and kind in (DATA, ACK) and pos + HEADER.size + length == len(data)

    def _record_at(self, data: bytes, pos: int, seg: int) -> int | None:
        parsed = self._parse(data, pos)
        if parsed is None:
            return None
        kind, entry_id, start, end = parsed
        if kind == DATA:
            self._pending[entry_id] = (seg, start, end - start)
            self._unacked.setdefault(seg, set()).add(entry_id)
        else:
            where = self._pending.pop(entry_id, None)
            if where is not None:
                self._unacked[where[0]].discard(entry_id)
        self._next_id = max(self._next_id, entry_id + 1)
        return end


def adopt_orphans(mine: Spool, root: Path, corrupt: Counter[DropReason] | None = None) -> int:
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
            if corrupt is not None:
                corrupt.update(other.corrupt)
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
