"""The datacenter flag: is an address in a published hosting/cloud, CDN or crawler range?

The ranges are iporigin's offline table (no network call). `iporigin.classify` parses
the text again, runs ipaddress's `is_global` (a walk over the special-purpose
networks) and builds a result object on every call: ~10 µs, paid by every new
client. Here the table is prepared once as sorted integer ranges of the datacenter
kinds only, so a lookup is one bisect on an integer the caller already has. A range
that touches a special-purpose network (where classify answers "reserved" before
it looks at the table) is marked, and a hit in it is confirmed by
`iporigin.classify` itself, so the answer is always iporigin's.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Sequence

import iporigin
from iporigin._data import dataset

# Address kinds that mean "a machine, not a person's connection". VPN and Tor
# exits are left out on purpose: behind them are people browsing.
DATACENTER_KINDS = frozenset({iporigin.HOSTING, iporigin.CDN, iporigin.BOT})


def _special_networks(version: int) -> list[tuple[int, int]]:
    """[first, last] of the networks ipaddress does not count as global. Outside them every
    address is global, so a datacenter range that touches none needs no further check.
    ipaddress keeps them in private tables: when those are not there, everything is
    special and every hit is confirmed by classify."""
    constants = ipaddress._IPv4Constants if version == 4 else ipaddress._IPv6Constants  # type: ignore[attr-defined]
    nets = list(getattr(constants, "_private_networks", ()))
    if version == 4:
        nets.append(getattr(constants, "_public_network", ipaddress.ip_network("100.64.0.0/10")))
    else:
        nets.append(ipaddress.ip_network("::ffff:0:0/96"))  # IPv4-mapped: IPv4's rules
    if len(nets) < 2:
        return [(0, 2 ** (32 if version == 4 else 128) - 1)]
    return [(int(n.network_address), int(n.broadcast_address)) for n in nets]


class _Ranges:
    """Sorted, merged [start, end] integer ranges; `find` is one bisect."""

    def __init__(self, starts: list[int], ends: list[int], labels: Sequence[int], kinds: list[bool], version: int) -> None:
        merged: list[list[int]] = []
        for start, end, label in zip(starts, ends, labels, strict=True):
            if not kinds[label]:
                continue
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        special = _special_networks(version)
        # Lists of ints, not arrays: bisect on an array makes an int object per comparison
        # (2x slower here); ~10k ranges per version make these lists < 1 MB.
        self.starts = [s for s, _ in merged]
        self.ends = [e for _, e in merged]
        self.touch_special = bytes(any(s <= last and first <= e for first, last in special) for s, e in merged)

    def __len__(self) -> int:
        return len(self.starts)


class DatacenterRanges:
    def __init__(self) -> None:
        data = dataset()
        kinds = [kind in DATACENTER_KINDS for _provider, kind in data.labels]
        self.v4 = _Ranges(list(data.v4_starts), list(data.v4_ends), data.v4_labels, kinds, 4)
        self.v6 = _Ranges(data.v6_starts, data.v6_ends, data.v6_labels, kinds, 6)

    def contains(self, version: int, value: int, text: str) -> bool:
        """True when the address (its version, integer value and text) is a datacenter's."""
        ranges = self.v4 if version == 4 else self.v6
        i = bisect_right(ranges.starts, value) - 1  # the last range starting at or below value
        if i < 0 or value > ranges.ends[i]:
            return False
        if not ranges.touch_special[i]:
            return True
        try:
            return iporigin.classify(text).kind in DATACENTER_KINDS
        except ValueError:
            return False
