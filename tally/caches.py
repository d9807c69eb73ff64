"""Bounded caches: a dict (or set) that is emptied when it reaches its limit, then refills
with what recurs.

The hot paths (the collector's encoder, stage 1, the SDK's pieces, the catalog, the Avro
writer) read their caches with a plain dict or set lookup; an LRU's bookkeeping on every
hit would cost more than it saves. What recurs is back within one refill; an occasional
clear is the whole price of the bound. These helpers are called on a miss only."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def bounded_put(cache: dict[K, V], key: K, value: V, limit: int) -> V:
    """cache[key] = value, emptying the cache first when it holds `limit` entries; returns value."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value


def bounded_add(cache: set[K], item: K, limit: int) -> None:
    """cache.add(item), emptying the set first when it holds `limit` items."""
    if len(cache) >= limit:
        cache.clear()
    cache.add(item)
