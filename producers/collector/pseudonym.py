"""The client address's pseudonym, and the key its rate-limit bucket is kept under.

The pseudonym is a keyed BLAKE2b (128 bits, hex) of the address's canonical text
under the site's key for the current period (edgekeys.py: the edge secret and the
period's agreed random key, combined with the site). It is what leaves the
collector; one address gives unlinkable pseudonyms on two sites or in two periods,
and none can be recomputed once the period's key is destroyed. A keyed BLAKE2b
compresses a whole key block before the first byte of input, so each site key's
state is set up once per period and copied per call.

The rate-limit key is never the raw address either, and does not change with the
site or period (a flood across sites is one client): a keyed digest under the edge
secret of an IPv4 address, or of an IPv6 client's /64 prefix, since one subscriber
usually holds a whole /64 and could otherwise rotate addresses inside it to get a
fresh bucket per request. It lives only in the collector's memory.
"""

from __future__ import annotations

import hashlib

from tally.producers.collector.client_ip import Client

from tally.caches import bounded_put

_PREFIX_64 = b"/64:"  # domain separation: a /64's digest is never an address's
MAX_SITES = 10_000  # prepared site keys held; emptied when full, and at each new period


class Pseudonyms:
    def __init__(self, secret: bytes) -> None:
        edge_key = hashlib.blake2b(secret, digest_size=32).digest()
        self._limit = hashlib.blake2b(key=edge_key, digest_size=16)
        self._sites: dict[bytes, hashlib.blake2b] = {}

    def forget(self) -> None:
        """Drop the prepared keys of the period that ended (forward secrecy)."""
        self._sites = {}

    def text(self, ip: str, site_key: bytes) -> str:
        """The pseudonym of an address's canonical text under a site's key."""
        keyed = self._sites.get(site_key)
        if keyed is None:
            keyed = hashlib.blake2b(key=site_key, digest_size=16)
            bounded_put(self._sites, site_key, keyed, MAX_SITES)
        h = keyed.copy()
        h.update(ip.encode())
        return h.hexdigest()

    def of(self, client: Client | None, site_key: bytes, limit: bool = True) -> tuple[str, bytes]:
        """(pseudonym, rate-limit key) of a client address (no address: the pseudonym of '');
        with limit=False (no rate limit) the key is not computed and is b""."""
        pseudonym = self.text("" if client is None else client[2], site_key)
        if not limit:
            return pseudonym, b""
        k = self._limit.copy()
        if client is None:
            return pseudonym, k.digest()
        if client[0] == 4:
            k.update(client[2].encode())
        else:
            k.update(_PREFIX_64 + (client[1] >> 64).to_bytes(8, "big"))
        return pseudonym, k.digest()
