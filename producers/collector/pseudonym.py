"""The client address's keyed pseudonym, and the key its rate-limit bucket is kept under.

`ip_pseudonym` is a keyed BLAKE2b (128 bits, hex) of the address's canonical text
under the edge key; it is what leaves the collector, and the stream derives the
salted visitor hash from it. The keyed state is set up once and copied per call
(a keyed BLAKE2b compresses a whole key block before the first byte of input).

The rate-limit key is never the raw address either: an IPv4 client's bucket is
its pseudonym's digest, an IPv6 client's is a keyed digest of its /64 prefix,
since one subscriber usually holds a whole /64 and could otherwise rotate
addresses inside it to get a fresh bucket per request.
"""

from __future__ import annotations

import hashlib

from tally.producers.collector.client_ip import Client

_PREFIX_64 = b"/64:"  # domain separation: a /64's digest is never an address's


class Pseudonyms:
    def __init__(self, secret: bytes) -> None:
        edge_key = hashlib.blake2b(secret, digest_size=32).digest()
        self._keyed = hashlib.blake2b(key=edge_key, digest_size=16)

    def of(self, client: Client | None) -> tuple[str, bytes]:
        """(ip_pseudonym, rate-limit key) of a client address (no address: the pseudonym of '')."""
        h = self._keyed.copy()
        h.update(b"" if client is None else client[2].encode())
        digest = h.digest()
        if client is None or client[0] == 4:
            return digest.hex(), digest
        k = self._keyed.copy()
        k.update(_PREFIX_64 + (client[1] >> 64).to_bytes(8, "big"))
        return digest.hex(), k.digest()
