"""The client's address, from the TCP peer and the X-Forwarded-For chain.

Only proxies listed in TALLY_TRUSTED_PROXIES are believed. Each trusted proxy
appends the address it saw to X-Forwarded-For, so the chain is read from the
right and the first (rightmost) address that is not a trusted proxy is the
client. Everything left of it was written by the client itself and is
ignored: a visitor who prepends fake entries still maps to one address.

The raw address is only ever held in memory inside the collector process;
what leaves it is a keyed pseudonym (see app.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address | None:
    """An address from one XFF entry, or None if it is not one.

    Accepts what proxies actually write: `1.2.3.4`, `1.2.3.4:5678`, `::1`,
    `[::1]`, `[::1]:5678`, optionally quoted; IPv4-mapped IPv6 becomes IPv4
    so the same client is the same address on dual-stack sockets.
    """
    s = text.strip().strip('"').strip()
    if not s or len(s) > 64:
        return None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        s = s[1:end]
    elif s.count(":") == 1:  # IPv4 with a port
        s = s.split(":", 1)[0]
    s = s.split("%", 1)[0]  # zone index of a link-local IPv6 address
    try:
        addr = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _entries(headers: Iterable[str]) -> list[str]:
    out: list[str] = []
    for header in headers:
        out.extend(header.split(","))
    return out


class ClientAddress:
    def __init__(self, trusted: Sequence[Network]) -> None:
        self.trusted = tuple(trusted)
        self._is_trusted = lru_cache(maxsize=4096)(self._lookup)

    def _lookup(self, addr: Address) -> bool:
        return any(addr.version == net.version and addr in net for net in self.trusted)

    def resolve(self, peer: str | None, forwarded_for: Sequence[str]) -> str:
        """The client address as text; '' when there is none (e.g. a Unix socket)."""
        peer_addr = parse_address(peer or "")
        if peer_addr is None:
            return ""
        if not self.trusted or not forwarded_for or not self._is_trusted(peer_addr):
            return str(peer_addr)
        # The peer is a trusted proxy: walk the chain right to left.
        last_trusted = peer_addr
        for entry in reversed(_entries(forwarded_for)[-64:]):  # bound the work per request
            addr = parse_address(entry)
            if addr is None:
                # Garbage can only come from the client's side of the chain;
                # the last trusted hop is the best we know.
                return str(last_trusted)
            if not self._is_trusted(addr):
                return str(addr)
            last_trusted = addr
        return str(last_trusted)
