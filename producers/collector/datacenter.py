"""The datacenter flag: is an address in a published hosting/cloud, CDN or crawler range?

The ranges are iporigin's offline table (no network call). `iporigin.classify` parses
the text again, runs ipaddress's `is_global` (a walk over the special-purpose
networks) and builds a result object on every call: ~10 µs, paid by every new
client. Here the table is prepared once as sorted integer ranges of the datacenter
kinds only, so a lookup is one bisect on an integer the caller already has. Only a
hit, a few percent of real traffic, is confirmed by `iporigin.classify` itself, so
the answer is always iporigin's (a reserved address is never flagged).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right

import iporigin
from iporigin._data import dataset

# Address kinds that mean "a machine, not a person's connection". VPN and Tor
# exits are left out on purpose: behind them are people browsing.
DATACENTER_KINDS = frozenset({iporigin.HOSTING, iporigin.CDN, iporigin.BOT})


class _Ranges:
    """Sorted, merged [start, end] integer ranges; `contains` is one bisect."""

    def __init__(self, starts: list[int], ends: list[int], labels: array, kinds: list[bool], v4: bool) -> None:
        merged: list[list[int]] = []
        for start, end, label in zip(starts, ends, labels, strict=True):
            if not kinds[label]:
                continue
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        # IPv4 in machine words (compact, fast bisect); IPv6 needs Python ints.
        self.starts = array("L", (s for s, _ in merged)) if v4 else [s for s, _ in merged]
        self.ends = array("L", (e for _, e in merged)) if v4 else [e for _, e in merged]

    def contains(self, value: int) -> bool:
        i = bisect_right(self.starts, value) - 1
        return i >= 0 and value <= self.ends[i]

    def __len__(self) -> int:
        return len(self.starts)


class DatacenterRanges:
    def __init__(self) -> None:
        data = dataset()
        kinds = [kind in DATACENTER_KINDS for _provider, kind in data.labels]
        self.v4 = _Ranges(list(data.v4_starts), list(data.v4_ends), data.v4_labels, kinds, v4=True)
        self.v6 = _Ranges(data.v6_starts, data.v6_ends, data.v6_labels, kinds, v4=False)

    def contains(self, version: int, value: int, text: str) -> bool:
        """True when the address (its version, integer value and text) is a datacenter's."""
        if not (self.v4 if version == 4 else self.v6).contains(value):
            return False
        try:
            return iporigin.classify(text).kind in DATACENTER_KINDS
        except ValueError:
            return False
