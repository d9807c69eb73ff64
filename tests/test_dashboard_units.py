"""The web dashboard's pure parts: password hashing, sessions (expiry, no fixation, CSRF
tokens), login throttling, shared-link tokens, and pages that carry no inline script.
The routes run on the real stack in test_dashboard.py."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from tally.api import accounts
from tally.api.web import pages
from tally.api.web.app import CSP, AnySite, scope_of
from tally.api.web.sessions import LoginThrottle, Sessions, same


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_passwords_are_argon2_hashes_and_verified():
    user = accounts.new_user("Ana@Example.com", "correct horse battery", "viewer", ("example.com",))
    assert user.email == "ana@example.com"
    assert user.password_hash.startswith("$argon2id$") and "correct horse" not in user.password_hash
    assert accounts.password_ok(user, "correct horse battery")
    assert not accounts.password_ok(user, "correct horse battery ")
    assert not accounts.password_ok(None, "correct horse battery")
    assert not accounts.password_ok(replace(user, deleted_at=datetime.now(UTC)), "correct horse battery")
    assert user.password_hash not in str(user.public())


@pytest.mark.parametrize("args, field", [
    (("not-an-email", "long enough pw", "viewer", ("a.com",)), "email"),
    (("a@b.c", "short", "viewer", ("a.com",)), "password"),
    (("a@b.c", "long enough pw", "owner", ()), "role"),
    (("a@b.c", "long enough pw", "viewer", ()), "site"),
])
def test_bad_accounts_are_refused_naming_the_field(args, field):
    with pytest.raises(accounts.AccountError, match=f"^{field}"):
        accounts.new_user(*args)


def test_sessions_are_new_on_every_login_and_expire():
    clock = Clock()
    sessions = Sessions(clock=clock, lifetime=100, idle=30)
    token, session = sessions.create("a@b.c")
    token2, session2 = sessions.create("a@b.c")
    assert token != token2 and session.csrf != session2.csrf and len(token) >= 43
    assert sessions.get("attacker-chosen") is None and sessions.get(None) is None
    clock.t += 20
    assert sessions.get(token) is session
    clock.t += 31  # idle too long
    assert sessions.get(token) is None
    assert sessions.get(token2) is None  # the same idle time for the second one
    token3, _ = sessions.create("a@b.c")
    for _ in range(3):  # used often enough to stay alive...
        clock.t += 25
        assert sessions.get(token3) is not None
    clock.t += 26  # ...but not past its lifetime
    assert sessions.get(token3) is None


def test_logout_and_user_removal_end_sessions():
    sessions = Sessions()
    a, _ = sessions.create("a@b.c")
    b, _ = sessions.create("a@b.c")
    c, _ = sessions.create("c@b.c")
    sessions.end(a)
    assert sessions.get(a) is None and sessions.get(b) is not None
    sessions.end_user("a@b.c")
    assert sessions.get(b) is None and sessions.get(c) is not None


def test_csrf_comparison():
    assert same("abc", "abc")
    assert not same("abc", "abd") and not same("", "") and not same(None, "abc") and not same("abc", None)


def test_login_throttle_per_account_and_per_client():
    clock = Clock()
    throttle = LoginThrottle(per_account=3, per_client=5, window=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("a@b.c", "10.0.0.1") == 0
        throttle.failed("a@b.c", "10.0.0.1")
    assert throttle.retry_after("a@b.c", "10.0.0.1") == 60
    assert throttle.retry_after("a@b.c", "10.0.0.2") == 60  # the account is locked from anywhere
    assert throttle.retry_after("x@b.c", "10.0.0.1") == 0
    clock.t += 61
    assert throttle.retry_after("a@b.c", "10.0.0.1") == 0
    for i in range(5):  # one client trying many accounts
        throttle.failed(f"u{i}@b.c", "10.0.0.9")
    assert throttle.retry_after("new@b.c", "10.0.0.9") > 0
    throttle.failed("s@b.c", "10.0.0.3")
    throttle.succeeded("s@b.c")
    assert throttle._failures.get(("account", "s@b.c")) is None


def test_share_tokens_are_random_and_checked_by_hash():
    token, link = accounts.new_link("example.com", "press")
    assert accounts.link_id_of(token) == link.link_id and token not in str(link.to_json())
    assert accounts.link_ok(link, token)
    assert not accounts.link_ok(link, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not accounts.link_ok(replace(link, revoked_at=datetime.now(UTC)), token)
    assert not accounts.link_ok(None, token)
    assert accounts.link_id_of("tsh_../../etc_x") is None


def test_scopes_of_users():
    admin = accounts.new_user("a@b.c", "long enough pw", "admin", ())
    viewer = accounts.new_user("v@b.c", "long enough pw", "viewer", ("a.com",))
    assert "any.site" in scope_of(admin).sites and scope_of(admin).tenants == ("*",)
    assert "" not in AnySite()
    assert scope_of(viewer).sites == ("a.com",) and "b.com" not in scope_of(viewer).sites
    assert scope_of(viewer).tenants == ()


def test_pages_escape_values_and_have_no_inline_script():
    viewer = accounts.new_user("v@b.c", "long enough pw", "viewer", ('"><script>alert(1)</script>',))
    site = '"><script>alert(1)</script>'
    out = pages.dashboard(site, user=viewer, csrf="tok", sites=[site], collector="http://127.0.0.1:8000")
    out += pages.login("tok", "<b>x</b>") + pages.sites(viewer, "tok", [site])
    assert "<script>alert" not in out and "<b>x</b>" not in out
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", out, re.S)
    assert scripts and all(s == "" for s in scripts)  # only <script src=...></script>
    assert " style=" not in out and "<style" not in out and "onclick" not in out
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP


def test_operations_page_has_every_section_labelled():
    admin = accounts.new_user("a@b.c", "long enough pw", "admin", ())
    out = pages.operations(admin, "tok")
    for table in ("components", "groups", "drops", "badrows"):
        assert f'<table id="{table}">' in out
    assert '<dl id="salts"' in out and '<dl id="reconcile"' in out


class _Keeper:
    """The keeper's view of the salts topic: which periods are live (no Kafka here: the
    status is a pure function of that list and the clock; test_salts.py runs the keeper)."""

    def __init__(self, periods: list[str]) -> None:
        self.periods = periods

    def known_periods(self) -> list[str]:
        return self.periods


def test_salt_status_names_periods_never_salts(tmp_path):
    from tally.streams.salts import SaltCache
    from tally.streams.watchdog import Watchdog

    from tally.config import Settings

    settings = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path), "TALLY_SALT_GRACE_HOURS": "2"})
    now = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)
    cache = SaltCache(settings, lambda: now, Watchdog(0, {}))
    assert cache.status() == {"current": "2026-11-30", "periods": [], "expired": []}
    cache._keeper = _Keeper(["2026-11-28", "2026-11-29", "2026-11-30"])
    status = cache.status()
    assert status["current"] == "2026-11-30" and status["expired"] == ["2026-11-28"]  # 11-29 is in its grace
    assert set(status) == {"current", "periods", "expired"}


def test_latest_reconcile_is_kept_private_and_read_back(tmp_path):
    from tally.sinks.reconcile import latest_path, read_latest, save_latest

    from tally.config import Settings

    settings = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path)})
    assert read_latest(settings) is None
    save_latest(settings, {"days": 3, "drift": [], "rollup_days": 0, "rollup_drift": []})
    got = read_latest(settings)
    assert got["days"] == 3 and got["drift"] == [] and got["checked_at"]
    assert latest_path(settings).stat().st_mode & 0o777 == 0o600
