"""The web dashboard's routes on the real stack (a Kafka broker, the sink owning chDB,
`tally dashboard`), each tried as an outsider: no session, a viewer reaching another
site, a missing or wrong CSRF token, a fixated session cookie, a foreign Origin or Host,
too many logins, a revoked shared link. Accounts are made with the real CLI."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import pytest
from tally.ops.stack import http_ok

from tests.conftest import Env, wait_for
from tests.test_api import tally

pytestmark = pytest.mark.integration

PASSWORD = "a long test password"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    cookies: dict[str, str]
    set_cookie: list[str]
    body: bytes

    def json(self):
        return json.loads(self.body or b"{}")

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Browser:
    """A client that keeps cookies by hand (urllib's jar refuses cookies of an IP address)."""

    base: str
    cookies: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None) -> Reply:
        hdrs = dict(headers or {})
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        req = urllib.request.Request(self.base + path, data=data, headers=hdrs, method=method)
        try:
            resp = _opener.open(req, timeout=60)
        except urllib.error.HTTPError as exc:
            resp = exc
        with resp:
            body = resp.read()
            set_cookie = resp.headers.get_all("Set-Cookie") or []
        for line in set_cookie:
            name, value = line.split(";", 1)[0].split("=", 1)
            if "Max-Age=0" in line or value in ('""', ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return Reply(resp.status, dict(resp.headers), dict(self.cookies), set_cookie, body)

    def get(self, path: str, **headers: str) -> Reply:
        return self.call("GET", path, headers=headers)

    def form(self, path: str, fields: dict[str, str], headers: dict | None = None) -> Reply:
        data = urllib.parse.urlencode(fields).encode()
        return self.call("POST", path, data, {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})

    def api(self, body: dict, headers: dict | None = None) -> Reply:
        return self.call("POST", "/api/v2/query", json.dumps(body).encode(),
                         {"Content-Type": "application/json", **(headers or {})})

    def login(self, email: str, password: str = PASSWORD, headers: dict | None = None) -> Reply:
        page = self.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)[1]
        return self.form("/login", {"csrf": token, "email": email, "password": password}, headers)

    def csrf(self, path: str = "/") -> str:
        return re.search(r'data-csrf="([^"]+)"', self.get(path).text)[1]


def make_user(env: Env, email: str, *args: str) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-m", "tally.ops", "user", "create", email, "--password-stdin", *args],
                         cwd=REPO, env=env.child_env(), input=PASSWORD + "\n", capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert PASSWORD not in out.stdout + out.stderr


def query(site: str) -> dict:
    return {"site_id": site, "metrics": ["visitors", "pageviews"], "date_range": "7d"}


@pytest.fixture
def dashboard(tally_env, spawn):
    s = tally_env.settings
    spawn(tally_env, "sink")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 90, "sink")
    spawn(tally_env, "dashboard")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.dashboard_port}/healthz"), 30, "dashboard")
    make_user(tally_env, "admin@example.com", "--role", "admin")
    make_user(tally_env, "viewer@example.com", "--site", "a.example")
    return tally_env, f"http://127.0.0.1:{s.dashboard_port}"


def test_no_session_gets_nothing(dashboard):
    env, base = dashboard
    b = Browser(base)
    for path in ("/", "/sites/a.example", "/adoption", "/operations"):
        r = b.get(path)
        assert r.status == 303 and r.headers["Location"] == "/login", path
    assert b.get("/web/v1/operations").status == 401
    assert b.api(query("a.example")).status == 401
    b.cookies["tally_session"] = "made-up"
    assert b.api(query("a.example"), {"X-CSRF-Token": "x"}).status == 401
    assert b.get("/", Host="evil.example:8001").status == 403  # DNS rebinding
    login = b.get("/login")
    assert login.status == 200
    csp = login.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert login.headers["Referrer-Policy"] == "same-origin" and login.headers["X-Frame-Options"] == "DENY"


def test_login_sets_a_strict_httponly_cookie_and_never_a_fixated_one(dashboard):
    env, base = dashboard
    b = Browser(base)
    b.cookies["tally_session"] = "attacker-fixed-value"
    r = b.login("viewer@example.com")
    assert r.status == 303 and r.headers["Location"] == "/"
    line = next(c for c in r.set_cookie if c.startswith("tally_session="))
    assert "HttpOnly" in line and "SameSite=Strict" in line and "Path=/" in line
    assert b.cookies["tally_session"] != "attacker-fixed-value" and len(b.cookies["tally_session"]) >= 43
    home = b.get("/")
    assert home.status == 200 and "a.example" in home.text and "viewer@example.com" in home.text


def test_login_needs_its_form_token_and_our_origin(dashboard):
    env, base = dashboard
    b = Browser(base)
    b.get("/login")
    r = b.form("/login", {"email": "viewer@example.com", "password": PASSWORD})
    assert r.status == 403 and "tally_session" not in b.cookies
    r = b.form("/login", {"csrf": "guessed", "email": "viewer@example.com", "password": PASSWORD})
    assert r.status == 403 and "tally_session" not in b.cookies
    r = b.login("viewer@example.com", headers={"Origin": "http://evil.example"})
    assert r.status == 403 and "tally_session" not in b.cookies
    assert b.login("viewer@example.com", "wrong password!").status == 401
    assert b.login("nobody@example.com").status == 401


def test_viewer_reads_only_granted_sites_and_only_with_the_csrf_token(dashboard):
    env, base = dashboard
    b = Browser(base)
    b.login("viewer@example.com")
    csrf = b.csrf()
    assert b.api(query("a.example")).status == 403  # a session without its token is not enough
    assert b.api(query("a.example"), {"X-CSRF-Token": "wrong"}).status == 403
    assert b.api(query("a.example"), {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}).status == 403
    ok = b.api(query("a.example"), {"X-CSRF-Token": csrf})
    assert ok.status == 200 and ok.json()["results"] == [{"metrics": [0, 0], "dimensions": []}]
    other = b.api(query("b.example"), {"X-CSRF-Token": csrf})
    assert other.status == 403 and "b.example" in other.json()["error"]
    assert b.get("/sites/b.example").status == 404
    assert b.get("/sites/a.example").status == 200
    adoption = b.call("GET", "/api/tally/v1/adoption", headers={"X-CSRF-Token": csrf})
    assert adoption.status == 403
    assert b.get("/operations").status == 403
    assert b.get("/web/v1/operations", **{"X-CSRF-Token": csrf}).status == 403


def test_admin_reads_every_site_adoption_and_operations(dashboard):
    env, base = dashboard
    b = Browser(base)
    b.login("admin@example.com")
    csrf = b.csrf()
    assert b.api(query("b.example"), {"X-CSRF-Token": csrf}).status == 200
    adoption = b.call("GET", "/api/tally/v1/adoption", headers={"X-CSRF-Token": csrf}).json()
    assert adoption["empty"] is True and adoption["events"] == 0 and len(adoption["families"]) == 5
    assert b.get("/operations").status == 200
    assert b.get("/web/v1/operations").status == 403  # no CSRF token
    ops = b.get("/web/v1/operations", **{"X-CSRF-Token": csrf}).json()
    assert {c["component"] for c in ops["components"]} >= {"sink", "dashboard"}
    assert ops["drops"] == [] and ops["bad_rows"] == [] and ops["reconcile"] is None  # nothing yet
    out = tally(env, "reconcile", "--json")
    assert out.returncode == 0, out.stderr
    ops = b.get("/web/v1/operations", **{"X-CSRF-Token": csrf}).json()
    assert ops["reconcile"]["days"] == 0 and ops["reconcile"]["drift"] == [] and ops["reconcile"]["checked_at"]


def test_logout_needs_the_token_and_ends_the_session(dashboard):
    env, base = dashboard
    b = Browser(base)
    b.login("viewer@example.com")
    csrf = b.csrf()
    session = b.cookies["tally_session"]
    assert b.form("/logout", {}).status == 403
    assert b.form("/logout", {"csrf": csrf}, {"Origin": "http://evil.example"}).status == 403
    assert b.api(query("a.example"), {"X-CSRF-Token": csrf}).status == 200
    r = b.form("/logout", {"csrf": csrf})
    assert r.status == 303 and "tally_session" not in b.cookies
    b.cookies["tally_session"] = session  # the old cookie, replayed
    assert b.api(query("a.example"), {"X-CSRF-Token": csrf}).status == 401
    assert b.get("/").status == 303


def test_logins_are_throttled(dashboard):
    env, base = dashboard
    b = Browser(base)
    for _ in range(5):
        assert b.login("viewer@example.com", "not the password").status == 401
    r = b.login("viewer@example.com")  # even the right password, until the window passes
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0 and "tally_session" not in b.cookies
    assert Browser(base).login("admin@example.com").status == 303  # other accounts still sign in


def test_shared_link_opens_one_site_until_revoked(dashboard):
    env, base = dashboard
    out = tally(env, "share", "create", "--site", "a.example", "--name", "press")
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip().splitlines()[-1]
    assert url.startswith("http://127.0.0.1:") and "/share/tsh_" in url
    path = urllib.parse.urlsplit(url).path
    token = path.rsplit("/", 1)[1]
    b = Browser(base)
    page = b.get(path)
    assert page.status == 200 and 'data-site="a.example"' in page.text and not page.set_cookie
    assert b.api(query("a.example"), {"X-Tally-Share": token}).status == 200
    assert b.api(query("b.example"), {"X-Tally-Share": token}).status == 403
    assert b.call("GET", "/api/tally/v1/adoption", headers={"X-Tally-Share": token}).status == 403
    assert b.api(query("a.example"), {"X-Tally-Share": token[:-2] + "xx"}).status == 401
    assert b.get("/sites/a.example").status == 303  # the link is not a session
    listed = json.loads(tally(env, "share", "list", "--json").stdout)
    assert [x["site"] for x in listed] == ["a.example"] and token not in json.dumps(listed)
    link_id = listed[0]["link_id"]
    assert tally(env, "share", "revoke", link_id).returncode == 0
    wait_for(lambda: b.api(query("a.example"), {"X-Tally-Share": token}).status == 401, 30, "revocation")
    assert b.get(path).status == 404


def test_accounts_are_stored_hashed_and_out_of_analysts_reach(dashboard):
    env, base = dashboard
    users = json.loads(tally(env, "user", "list", "--json").stdout)
    assert {u["email"]: u["role"] for u in users} == {"admin@example.com": "admin", "viewer@example.com": "viewer"}
    assert "password_hash" not in json.dumps(users)
    for table in ("dashboard_users", "share_links"):
        out = tally(env, "query", f"SELECT * FROM {table}")
        assert out.returncode == 1 and table in out.stderr
    from tally.sinks.query import SinkSocket

    sock = SinkSocket(env.settings.socket_path, timeout=30)  # the sink refuses malformed records
    when = "2026-01-01T00:00:00+00:00"
    for route, record, why in (
            ("/v1/users", {"email": "x@y.z", "password_hash": "plain", "role": "admin", "sites": [], "created_at": when},
             "argon2"),
            ("/v1/users", {"email": "x@y.z"}, "bad record"),
            ("/v1/shares", {"link_id": "a", "token_hash": "short", "site": "a", "created_at": when}, "SHA-256")):
        status, body = sock.request("POST", route, record)
        assert status == 400 and why in json.loads(body)["error"], body
    info = tally(env, "user", "login-info").stdout
    assert f"Dashboard: {base}/" in info and "Sign in as admin@example.com" in info
    assert tally(env, "user", "delete", "viewer@example.com").returncode == 0
    wait_for(lambda: Browser(base).login("viewer@example.com").status == 401, 30, "deleted user refused")
