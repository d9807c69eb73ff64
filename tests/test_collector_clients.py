"""The collector's per-client work: address parsing, datacenter flag, pseudonym, rate limit.

Real traffic is mostly new clients, so these run on nearly every request without a
cache; here they are checked against the references they replace (ipaddress,
iporigin.classify, the keyed BLAKE2b pseudonym) and under a flood of distinct clients.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import tracemalloc

import iporigin
from hypothesis import given, settings
from hypothesis import strategies as st
from iporigin._data import dataset
from tally.producers.collector.client_ip import ClientAddress, parse_client
from tally.producers.collector.datacenter import DATACENTER_KINDS, DatacenterRanges
from tally.producers.collector.pseudonym import Pseudonyms
from tally.producers.collector.ratelimit import RateLimiter

ADDRESSES = st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                      st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address))


def expected(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int, str]:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version, int(addr), str(addr)


@settings(max_examples=500, deadline=None)
@given(ADDRESSES, st.sampled_from(["{}", "{}:4711", "[{}]", "[{}]:443", '"{}"', " {} "]))
def test_every_address_parses_as_ipaddress_does_in_every_form_proxies_write(addr, form):
    if ":" in str(addr) and form == "{}:4711":
        form = "[{}]:4711"  # an IPv6 address with a port is always bracketed
    assert parse_client(form.format(addr)) == expected(addr)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=70) | st.from_regex(r"\A[0-9.:a-fA-F\[\]%]{1,45}\Z"))
def test_any_text_is_an_address_ipaddress_agrees_on_or_none(text):
    got = parse_client(text)
    if got is not None:
        assert got == expected(ipaddress.ip_address(got[2]))


def test_trusted_proxies_are_matched_by_range_for_both_versions():
    proxies = ClientAddress([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")])
    assert proxies.resolve("10.255.255.255", ["2001:db8:ffff::1, 9.9.9.9, 10.0.0.1"]) == "9.9.9.9"
    assert proxies.resolve("2001:db8::7", ["11.0.0.1"]) == "11.0.0.1"
    assert proxies.resolve("11.0.0.1", ["9.9.9.9"]) == "11.0.0.1"  # untrusted peer


# --- datacenter flag -------------------------------------------------------------------

def _inside_table(rng: random.Random, n: int) -> list[str]:
    """Addresses at, next to and inside iporigin's ranges, of every kind."""
    data, out = dataset(), []
    for starts, ends, cls in ((data.v4_starts, data.v4_ends, ipaddress.IPv4Address),
                              (data.v6_starts, data.v6_ends, ipaddress.IPv6Address)):
        top = 2**32 - 1 if cls is ipaddress.IPv4Address else 2**128 - 1
        for i in rng.sample(range(len(starts)), min(n, len(starts))):
            s, e = starts[i], ends[i]
            for v in (s - 1, s, (s + e) // 2, e, e + 1):
                if 0 <= v <= top:
                    out.append(str(cls(v)))
    return out


def test_datacenter_flag_is_iporigins_answer():
    rng = random.Random(18)
    ranges = DatacenterRanges()
    samples = _inside_table(rng, 3000)
    samples += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(20000)]
    samples += [str(ipaddress.IPv6Address((0x2 << 124) | rng.getrandbits(125))) for _ in range(5000)]
    samples += ["127.0.0.1", "10.1.2.3", "192.168.1.1", "::1", "fe80::1", "100.64.0.1", "0.0.0.0"]
    for table, cls in ((ranges.v4, ipaddress.IPv4Address), (ranges.v6, ipaddress.IPv6Address)):
        for i in [i for i, touch in enumerate(table.touch_special) if touch]:  # ranges with reserved parts
            s, e = table.starts[i], table.ends[i]
            samples += [str(cls(v)) for v in (s, (s + e) // 2, e)]
    flagged = 0
    for text in samples:
        client = parse_client(text)
        want = iporigin.classify(text).kind in DATACENTER_KINDS
        assert ranges.contains(*client) == want, text
        flagged += want
    assert flagged > 1000  # the samples do reach into the datacenter ranges
    assert ranges.contains(*parse_client("52.95.110.1"))  # AWS


# --- pseudonym and rate-limit key ----------------------------------------------------------

SITE_KEY = bytes(range(64))  # a site's key for one period (edgekeys.py)


def test_pseudonym_is_the_keyed_blake2b_of_the_address_text_under_the_site_key():
    p = Pseudonyms(b"edge secret")
    for text in ("81.2.69.160", "2a01:4f8:1:2::3"):
        want = hashlib.blake2b(text.encode(), key=SITE_KEY, digest_size=16).hexdigest()
        assert p.of(parse_client(text), SITE_KEY)[0] == want == p.text(text, SITE_KEY)
    other_site = bytes(64)
    assert p.of(parse_client("81.2.69.160"), other_site)[0] != p.of(parse_client("81.2.69.160"), SITE_KEY)[0]
    assert p.of(None, SITE_KEY)[0] == hashlib.blake2b(b"", key=SITE_KEY, digest_size=16).hexdigest()
    # The rate-limit key follows the client across sites (a flood over many sites is one client).
    assert p.of(parse_client("81.2.69.160"), other_site)[1] == p.of(parse_client("81.2.69.160"), SITE_KEY)[1]
    assert Pseudonyms(b"other").of(parse_client("81.2.69.160"), SITE_KEY)[1] != p.of(parse_client("81.2.69.160"), SITE_KEY)[1]


def test_ipv6_clients_share_one_rate_limit_key_per_64_and_ipv4_one_per_address():
    p = Pseudonyms(b"edge secret")
    same_64 = {p.of(parse_client(f"2a01:4f8:1:2:{i:x}::{i:x}"), SITE_KEY) for i in range(1, 50)}
    assert len({pseudonym for pseudonym, _ in same_64}) == 49  # visitors are still told apart ...
    assert len({key for _, key in same_64}) == 1  # ... but share one bucket
    assert p.of(parse_client("2a01:4f8:1:3::1"), SITE_KEY)[1] != next(iter(same_64))[1]  # the next /64
    assert len({p.of(parse_client(f"81.2.69.{i}"), SITE_KEY)[1] for i in range(50)}) == 50
    for text in ("81.2.69.160", "2a01:4f8:1:2::3"):  # keys carry no raw address
        packed = ipaddress.ip_address(text).packed
        assert packed[:8] not in p.of(parse_client(text), SITE_KEY)[1]


def test_rotating_inside_a_64_is_rate_limited_as_one_client():
    p, now = Pseudonyms(b"k"), [0.0]
    rl = RateLimiter(rate=1, burst=5, clock=lambda: now[0])
    rotating = [rl.allow(p.of(parse_client(f"2a01:4f8:1:2::{i:x}"), SITE_KEY)[1]) for i in range(1, 21)]
    assert rotating.count(True) == 5
    spread = [rl.allow(p.of(parse_client(f"2a01:4f8:1:{i:x}::1"), SITE_KEY)[1]) for i in range(100, 120)]
    assert all(spread)


# --- rate limit under a flood of distinct clients ------------------------------------------------

def test_rate_limit_memory_is_bounded_under_a_client_flood_and_a_flooder_stays_limited():
    now = [0.0]
    rl = RateLimiter(rate=20, burst=200, clock=lambda: now[0], max_clients=10_000)
    p = Pseudonyms(b"k")
    flooder = p.of(parse_client("81.2.69.160"), SITE_KEY)[1]
    allowed = held = 0
    tracemalloc.start()
    try:
        for i in range(300_000):  # 300k distinct clients at 30k/s, one flooder at 3k/s among them
            now[0] = i / 30_000
            assert rl.allow(i.to_bytes(16, "big"))  # every new client passes
            if i % 10 == 0:
                allowed += rl.allow(flooder)
            held = max(held, len(rl))
            if i == 100_000:
                after_100k = tracemalloc.get_traced_memory()[0]
        after_300k = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held <= 2 * 10_000
    assert after_300k < after_100k + 1_000_000  # flat, not growing with the clients seen
    assert after_300k < 4_000_000
    # 10 s of flooding: the burst plus 20/s, not the 30,000 it sent.
    assert allowed <= 200 + 20 * 10 + 1


def test_a_bucket_survives_the_turn_of_generations_and_idle_ones_are_forgotten():
    now = [0.0]
    rl = RateLimiter(rate=2, burst=4, clock=lambda: now[0])  # a generation lasts 4 / 2 = 2 s
    assert [rl.allow("a") for _ in range(5)] == [True] * 4 + [False]
    now[0] = 1.0  # two tokens back
    assert [rl.allow("a") for _ in range(3)] == [True, True, False]
    now[0] = 2.1  # the generations turn; "a" has 2.2 tokens, not a full bucket
    assert [rl.allow("a") for _ in range(3)] == [True, True, False]
    now[0] = 100.0
    assert rl.allow("b") and len(rl) == 1
