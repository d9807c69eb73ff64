"""Free TCP ports for the processes the tests start.

Ports come from below the kernel's ephemeral range: a broker or collector restarted on its
port must not find it taken by a client's outgoing connection (or by a client that connected
to itself while nothing listened there). No port is handed out twice in one test process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_given: set[int] = set()
_rnd = random.Random()


def free_port_block(count: int) -> int:
    """A port p such that p .. p+count-1 are all free now and were never handed out before."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(500):
        first = _rnd.randrange(10000, low - count)
        block = range(first, first + count)
        if _given.intersection(block):
            continue
        socks = []
        try:
            for p in block:
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        _given.update(block)
        return first
    raise RuntimeError(f"no block of {count} free ports")


def free_port() -> int:
    return free_port_block(1)


def free_port_pair() -> int:
    """A port p with p+1 free too (the broker's controller listener)."""
    return free_port_block(2)
