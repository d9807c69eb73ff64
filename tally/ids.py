"""Event ids: UUIDv7 (RFC 9562), minted by the collector for beacons and by the SDK for
product events.

48 bits of Unix ms, then 74 random bits. The random part of the text form,
"aaa-vrrr-rrrrrrrrrrrr", is cut in blocks of 4096 from one os.urandom() call with C-level
slicing, so an id costs a list pop and a per-ms prefix instead of a PRNG call and string
formatting (uuid.uuid4() and the uuid6 package's uuid7() cost several µs). list.pop() is
atomic under the GIL, so two threads never get the same tail; a forked child empties the
pool so pre-fork servers (gunicorn) do not mint the parent's ids.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

_TAIL_BLOCK = 4096
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))  # variant bits 10
_TAIL_LAYOUT = ((0, 0, 3), (4, 4, 4), (9, 8, 12))  # (to, from, width): 20 hex chars -> 21-char tail
tail_pool: list[bytes] = []  # tails ready to use; the hot paths pop from it directly
os.register_at_fork(after_in_child=tail_pool.clear)


def _new_tails(n: int = _TAIL_BLOCK) -> list[bytes]:
    raw = bytearray(os.urandom(10 * n))
    raw[2::10] = raw[2::10].translate(_VARIANT)  # hex char 4 of each cell becomes 8, 9, a or b
    hexed = raw.hex().encode()  # 20 hex chars per id; char 3 is unused (74 bits are needed)
    cells = bytearray(b"-" * (21 * n))
    for to, frm, width in _TAIL_LAYOUT:
        for j in range(width):
            cells[to + j::21] = hexed[frm + j::20]
    block = bytes(cells)
    return [block[i:i + 21] for i in range(0, 21 * n, 21)]


def uuid7_tail() -> bytes:
    """The random 21 characters of a UUIDv7's text form, as ASCII bytes."""
    try:
        return tail_pool.pop()
    except IndexError:
        fresh = _new_tails()
        tail = fresh.pop()
        tail_pool.extend(fresh)
        return tail


def uuid7_prefix(ms: int) -> str:
    """The first 15 characters of a UUIDv7's text form: the ms timestamp and version."""
    h = f"{ms:012x}"
    return f"{h[:8]}-{h[8:]}-7"


def uuid7(ms: int | None = None) -> str:
    if ms is None:
        ms = time.time_ns() // 1_000_000
    return uuid7_prefix(ms) + uuid7_tail().decode()


_MIX = 0x9E3779B97F4A7C15  # odd: multiplying by it permutes 64-bit values


def fingerprints(ids: list[bytes]) -> list[int]:
    """64-bit fingerprints of event ids given as their ASCII text (the stream worker's
    deduplication keys): for UUIDs, (high half * an odd constant) XOR low half, so the 74
    random bits of a UUIDv7 (122 of a UUIDv4) all count and two distinct ids collide with
    probability 2**-64. Case and dashes do not matter. Anything else: its BLAKE2b-64.
    The same text always gives the same fingerprint, in every process."""
    if ids and all(len(i) == 36 for i in ids):
        hexed = b"".join(ids).translate(None, b"-")
        if len(hexed) == 32 * len(ids):
            try:
                raw = bytes.fromhex(hexed.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raw = b""
            if len(raw) == 16 * len(ids):  # fromhex skips whitespace: only a clean parse counts
                halves = np.frombuffer(raw, dtype=">u8").reshape(-1, 2).astype(np.uint64)
                return ((halves[:, 0] * np.uint64(_MIX)) ^ halves[:, 1]).tolist()
    return [_fingerprint(i) for i in ids]


def _fingerprint(event_id: bytes) -> int:
    return fingerprints([event_id])[0] if _is_uuid_text(event_id) else _hashed(event_id)


def _is_uuid_text(event_id: bytes) -> bool:
    hexed = event_id.translate(None, b"-")
    return len(hexed) == 32 and all(c in b"0123456789abcdefABCDEF" for c in hexed)


def _hashed(event_id: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(event_id, digest_size=8).digest(), "big")
