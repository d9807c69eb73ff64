"""The client's country, looked up in memory from the raw address before the collector
pseudonymises it (the address itself never leaves the process).

The lookup is offline: `iptocc` (MIT or Apache-2.0) embeds the Regional Internet
Registries' delegation files in its wheel and answers in well under a microsecond; no
lookup leaves the machine. The country is the one the registry *assigned* the block to,
which agrees with commercial geolocation for about 95% of IPv4 addresses; regions are not
in that data, so Tally has countries only. Private, reserved and unassigned addresses have
no country (""). See docs/collector.md for the choice of data and its attribution.
"""

from __future__ import annotations

from iptocc import country_code


def country_of(ip: str) -> str:
    """ISO 3166-1 alpha-2 code of an address, or "" when unknown (or no address at all)."""
    if not ip:
        return ""
    try:
        code = country_code(ip)
    except Exception:  # not an address: nothing to look up
        return ""
    return code if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha() else ""
