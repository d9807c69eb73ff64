"""The collector's minimisation (producers/collector/minimise.py) and event-name rule (parse.py)."""

from __future__ import annotations

import re

import pytest
from tally.producers.collector.minimise import Minimiser, hash_route, referrer_origin
from tally.producers.collector.parse import BadBeacon, plausible_beacon, tally_beacon
from tally.schemas.reasons import DropReason

from tally.config import Settings, SettingsError

ALLOWED = frozenset({"example.com"})


def minimiser(**env: str) -> Minimiser:
    return Minimiser(Settings.from_env(env))


@pytest.mark.parametrize(("raw", "clean"), [
    ("/", "/"),
    ("/pricing", "/pricing"),
    ("/tickets/123/edit", "/tickets/123/edit"),
    ("/users/alice@example.com/orders", "/users/:email/orders"),
    ("/users/alice%40example.com", "/users/:email"),
    ("/o/0f8fad5b-d9cb-469f-a165-70867728950e", "/o/:uuid"),
    ("/reset/9f86d081884c7d659a2feaa0", "/reset/:hex"),
    ("/invite/Zm9vYmFyYmF6cXV4cXV1eDEyMw", "/invite/:token"),
    ("/keys/sk_live_4eC39HqLyjWDarjtT1zdp7dc", "/keys/:secret"),
    ("/login;jsessionid=ABC123DEF", "/login"),
    ("/pay/4111111111111111", "/pay/:card"),
    ("/iban/DE89370400440532013000", "/iban/:iban"),
    ("/peer/203.0.113.7", "/peer/:ip"),
    ("/call/+4915112345678", "/call/:phone"),
    ("/annual-report-2024-final", "/annual-report-2024-final"),
    ("/a?utm_source=news&email=bob@example.com&token=x#frag", "/a?utm_source=news"),
    ("/a?utm_campaign=alice@example.com", "/a"),
    ("/a?q=secret", "/a"),
    ("https://example.com/x/alice@example.com?utm_medium=social&sid=1#top", "/x/:email?utm_medium=social"),
    ("no-slash", "/no-slash"),
])
def test_paths_keep_the_pathname_allowlisted_params_and_no_personal_data(raw, clean):
    assert minimiser().path(raw) == clean


@pytest.mark.parametrize(("url", "routed"), [
    ("https://example.com/#/settings", "https://example.com/settings"),
    ("https://example.com/app/#/settings", "https://example.com/app/settings"),
    ("https://example.com/app#/settings", "https://example.com/app/settings"),
    ("https://example.com/app/#!/orders/42", "https://example.com/app/orders/42"),  # AngularJS's #!
    ("https://example.com/app/#settings/", "https://example.com/app/settings/"),
    ("https://example.com/?utm_source=x#/search?q=bob", "https://example.com/search?utm_source=x"),
    ("https://example.com/#/a#b", "https://example.com/a"),
    ("/app/#/a?b=1", "/app/a"),  # a path, as tally.js's `u` option may send
    ("https://example.com/app/", "https://example.com/app/"),  # no fragment: unchanged
    ("https://example.com/app/#", "https://example.com/app/"),
    ("https://example.com/app/#/", "https://example.com/app/"),
    # Parameters, not routes: sign-in flows' tokens are never kept.
    ("https://example.com/cb#access_token=ya29.a0AfH6SMBx8z9&token_type=Bearer", "https://example.com/cb"),
    ("https://example.com/cb#/state=xyz&code=SplxlOBeZQQYbYS6WxSbIA", "https://example.com/cb"),
])
def test_hash_route_moves_the_fragments_route_into_the_path(url, routed):
    assert hash_route(url) == routed


@pytest.mark.parametrize(("h", "path"), [
    (None, "/app/"), (0, "/app/"), (False, "/app/"), ("0", "/app/"),
    (1, "/app/orders/:uuid"), (True, "/app/orders/:uuid"), ("1", "/app/orders/:uuid"),
])
def test_plausible_hash_mode_keeps_the_route_minimised_like_any_path(h, path):
    body = {"n": "pageview", "d": "example.com",
            "u": "https://example.com/app/?email=a%40b.example#!/orders/0f8fad5b-d9cb-469f-a165-70867728950e?tab=2"}
    if h is not None:
        body["h"] = h
    assert minimiser().path(plausible_beacon(body, ALLOWED).path) == path


@pytest.mark.parametrize("h", [2, -1, "yes", "", [1], {"on": 1}])
def test_plausible_hash_mode_other_values_are_400_naming_h(h):
    with pytest.raises(BadBeacon, match="^h must be 1"):
        plausible_beacon({"n": "pageview", "u": "https://example.com/#/a", "d": "example.com", "h": h}, ALLOWED)


def test_query_allowlist_and_extra_patterns_are_configurable():
    m = minimiser(TALLY_QUERY_PARAMS="utm_*,lang", TALLY_PATH_REDACT_PATTERNS=r"^cust-\d+$ ^order-")
    assert m.path("/c/cust-42/order-7?lang=de&ref=x") == "/c/:redacted/:redacted?lang=de"
    assert minimiser(TALLY_QUERY_PARAMS="").path("/a?utm_source=x") == "/a"
    with pytest.raises(SettingsError, match="TALLY_PATH_REDACT_PATTERNS"):
        Settings.from_env({"TALLY_PATH_REDACT_PATTERNS": "(unclosed"})


@pytest.mark.parametrize(("raw", "origin"), [
    ("https://news.example/story/1?email=bob@example.com#c", "https://news.example"),
    ("http://user:pw@Blog.Example:8080/p", "http://blog.example:8080"),
    ("android-app://com.example.app/", "android-app://com.example.app"),
    ("not a url", None), ("", None), (None, None), ("http://[::1", None),
])
def test_referrer_keeps_its_origin_only(raw, origin):
    assert referrer_origin(raw) == origin


def test_props_keep_allowlisted_keys_with_safe_values_and_count_the_rest():
    m = minimiser(TALLY_PROPS_ALLOWLIST="example.com:plan,example.com:email,*:seats")
    kept, dropped = m.props("example.com", {"plan": "pro", "seats": "3", "email": "bob@example.com",
                                            "name": "Bob", "plan_note": "x"})
    assert kept == {"plan": "pro", "seats": "3"}
    assert dropped == {DropReason.PROP_NOT_ALLOWED: 2, DropReason.PROP_UNSAFE_VALUE: 1}
    kept, dropped = m.props("other.example", {"plan": "pro", "seats": "5"})
    assert kept == {"seats": "5"} and dropped == {DropReason.PROP_NOT_ALLOWED: 1}
    kept, dropped = m.props("example.com", {"plan": "x" * 101})
    assert kept == {} and dropped == {DropReason.PROP_UNSAFE_VALUE: 1}
    kept, dropped = minimiser().props("example.com", {"plan": "pro"})  # default: none kept
    assert kept == {} and dropped == {DropReason.PROP_NOT_ALLOWED: 1}
    # An engagement event's figures (set by the parser, which refuses them from beacons) are kept.
    kept, dropped = minimiser().props("example.com", {"tally:scroll_depth": "40", "tally:engaged_ms": "900"})
    assert kept == {"tally:scroll_depth": "40", "tally:engaged_ms": "900"} and not dropped
    with pytest.raises(SettingsError, match="TALLY_PROPS_ALLOWLIST"):
        Settings.from_env({"TALLY_PROPS_ALLOWLIST": "plan"})


def test_the_tracker_extensions_props_are_kept_for_every_site_each_cut_by_its_rule():
    # No TALLY_PROPS_ALLOWLIST: the extensions' props (docs/tracker.md) need none.
    kept, dropped = minimiser().props("example.com", {
        "url": "https://Docs.Example/u/alice@example.com/guide.pdf?token=abc#p2",
        "path": "/missing/0f8fad5b-d9cb-469f-a165-70867728950e?utm_source=x&q=1",
        "screen": "Laptop", "plan": "pro"})
    assert kept == {"url": "https://docs.example/u/:email/guide.pdf",
                    "path": "/missing/:uuid?utm_source=x", "screen": "Laptop"}
    assert dropped == {DropReason.PROP_NOT_ALLOWED: 1}
    for unsafe in ({"url": "mailto:bob@example.com"}, {"url": "javascript:alert(1)"}, {"url": "not a url"},
                   {"screen": "1920x1080"}, {"screen": "mobile"}):
        assert minimiser().props("example.com", unsafe) == ({}, {DropReason.PROP_UNSAFE_VALUE: 1}), unsafe
    assert minimiser().props("example.com", {"url": "http://x.example"})[0] == {"url": "http://x.example/"}


@pytest.mark.parametrize("name", ["signup", "Outbound Link: Click", "File Download", "404", "checkout/step-2"])
def test_safe_event_names_pass(name):
    assert tally_beacon({"site": "example.com", "path": "/", "event": name}, ALLOWED).event == name


@pytest.mark.parametrize(("name", "why"), [
    ("bob@example.com", "only letters"), ("x" * 65, "longer than 64"), ("<script>", "only letters"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "personal data or a secret"), ("call +4915112345678", "only letters"),
    ("4111 1111 1111 1111", "a secret (card)"),
])
def test_unsafe_event_names_are_400_naming_the_field(name, why):
    with pytest.raises(BadBeacon, match=rf"^event .*{re.escape(why)}"):
        tally_beacon({"site": "example.com", "path": "/", "event": name}, ALLOWED)
    with pytest.raises(BadBeacon, match=rf"^n .*{re.escape(why)}"):
        plausible_beacon({"n": name, "u": "https://example.com/", "d": "example.com"}, ALLOWED)
