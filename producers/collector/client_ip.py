"""The client's address, from the TCP peer and the X-Forwarded-For chain.

Only proxies listed in TALLY_TRUSTED_PROXIES are believed. Each trusted proxy
appends the address it saw to X-Forwarded-For, so the chain is read from the
right and the first (rightmost) address that is not a trusted proxy is the
client. Everything left of it was written by the client itself and is
ignored: a visitor who prepends fake entries still maps to one address.

The raw address is only held in memory while its request is handled; what
leaves this module is (version, integer value, canonical text), and what leaves
the collector is a keyed pseudonym (pseudonym.py). Nothing here is cached per
client: almost every beacon of real traffic comes from an address not seen
recently, so a per-address cache would miss, and hold raw addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

from tally.caches import bounded_put

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# (IP version, the address as an integer, its canonical text)
Client = tuple[int, int, str]
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_pton, _ntop = socket.inet_pton, socket.inet_ntop
_TEN_ZEROS = bytes(10)


def parse_client(text: str) -> Client | None:
    """An address from one XFF entry, or None if it is not one.

    Accepts what proxies actually write: `1.2.3.4`, `1.2.3.4:5678`, `::1`,
    `[::1]`, `[::1]:5678`, optionally quoted; IPv4-mapped IPv6 becomes IPv4
    so the same client is the same address on dual-stack sockets. IPv4 is
    parsed by inet_pton (strict dotted decimal, as ipaddress: the text accepted
    is already canonical) and IPv6 by inet_pton/inet_ntop: several times cheaper
    than ipaddress, and the same values and text.
    """
    # Fast path: what a proxy nearly always writes, a bare address (no strip/split copies).
    # inet_pton refuses anything else (spaces, quotes, ports, zones), which goes below.
    try:
        if ":" not in text:
            return 4, int.from_bytes(_pton(_AF_INET, text), "big"), text
        packed = _pton(_AF_INET6, text)
        if not packed.startswith(_TEN_ZEROS):
            return 6, int.from_bytes(packed, "big"), _ntop(_AF_INET6, packed)
    except (OSError, ValueError):
        pass
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
    if ":" not in s:
        try:
            return 4, int.from_bytes(socket.inet_pton(_AF_INET, s), "big"), s
        except (OSError, ValueError):
            return None
    try:
        packed = socket.inet_pton(_AF_INET6, s)
    except (OSError, ValueError):
        return None
    if packed.startswith(_TEN_ZEROS):  # IPv4-mapped and the like: ipaddress's rules and text
        try:
            addr = ipaddress.IPv6Address(s)
        except ValueError:
            return None
        if addr.ipv4_mapped is not None:
            v4 = addr.ipv4_mapped
            return 4, int(v4), str(v4)
        return 6, int(addr), str(addr)
    # inet_ntop writes RFC 5952 text (lower case, the first longest run of two or more
    # zero groups as ::), which is what ipaddress writes for these addresses.
    return 6, int.from_bytes(packed, "big"), socket.inet_ntop(_AF_INET6, packed)


def parse_address(text: str) -> Address | None:
    """parse_client's address as an ipaddress object."""
    client = parse_client(text)
    return None if client is None else ipaddress.ip_address(client[2])


def _entries(headers: Iterable[str]) -> list[str]:
    out: list[str] = []
    for header in headers:
        out.extend(header.split(","))
    return out


class ClientAddress:
    def __init__(self, trusted: Sequence[Network]) -> None:
        self.trusted = tuple(trusted)
        # (version, first, last) as integers: a check is a few comparisons, no objects.
        self._ranges = tuple((n.version, int(n.network_address), int(n.broadcast_address)) for n in self.trusted)
        # Peers that are trusted proxies (few, and not visitors), parsed once.
        self._proxies: dict[str, Client] = {}

    def _is_trusted(self, client: Client) -> bool:
        version, value, _ = client
        for v, first, last in self._ranges:  # noqa: SIM110 (a loop: no generator set up per call)
            if v == version and first <= value <= last:
                return True
        return False

    def client(self, peer: str | None, forwarded_for: Sequence[str]) -> Client | None:
        """The client address; None when there is none (e.g. a Unix socket)."""
        peer_addr = self._proxies.get(peer) if peer else None
        if peer_addr is None:
            peer_addr = parse_client(peer or "")
            if peer_addr is None:
                return None
            if not self._ranges or not self._is_trusted(peer_addr):
                return peer_addr
            bounded_put(self._proxies, peer, peer_addr, 1024)
        if not forwarded_for:
            return peer_addr
        # The peer is a trusted proxy: walk the chain right to left (bounded: at most
        # 64 entries). One proxy in front writes one header of one entry: taken as is.
        if len(forwarded_for) == 1 and "," not in forwarded_for[0]:
            entries: Sequence[str] = forwarded_for
        else:
            entries = _entries(forwarded_for)[-64:]
        last_trusted = peer_addr
        for entry in reversed(entries):
            addr = parse_client(entry)
            if addr is None:
                # Garbage can only come from the client's side of the chain;
                # the last trusted hop is the best we know.
                return last_trusted
            if not self._is_trusted(addr):
                return addr
            last_trusted = addr
        return last_trusted

    def resolve(self, peer: str | None, forwarded_for: Sequence[str]) -> str:
        """The client address as text; '' when there is none."""
        client = self.client(peer, forwarded_for)
        return "" if client is None else client[2]
