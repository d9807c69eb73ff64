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

import os
import time

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
