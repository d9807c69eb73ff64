"""Analyst sessions, CSRF tokens and login throttling for the web dashboard.

Sessions live in the dashboard process's memory, keyed by the SHA-256 of the
cookie's token: no session secret is ever written anywhere, and a restart of
`tally dashboard` signs everyone out. A login always makes a new token (an
attacker-chosen cookie is never promoted to a session: no fixation). Each session
has its own CSRF token, required on every state-changing request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

SESSION_COOKIE = "tally_session"
LOGIN_COOKIE = "tally_login"  # the login form's CSRF token (double submit), before any session
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600  # absolute lifetime
IDLE_SECONDS = 2 * 3600
MAX_SESSIONS = 10_000


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two tokens; False when either is missing."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


@dataclass
class Session:
    email: str
    csrf: str
    started: float
    seen: float


@dataclass
class Sessions:
    clock: Callable[[], float] = time.monotonic
    lifetime: float = SESSION_SECONDS
    idle: float = IDLE_SECONDS
    _by_digest: dict[str, Session] = field(default_factory=dict)

    def create(self, email: str) -> tuple[str, Session]:
        """(the new cookie token, its session)."""
        now = self.clock()
        if len(self._by_digest) >= MAX_SESSIONS:
            self._sweep(now)
            if len(self._by_digest) >= MAX_SESSIONS:  # still full: the oldest goes
                del self._by_digest[min(self._by_digest, key=lambda d: self._by_digest[d].seen)]
        token = secrets.token_urlsafe(32)
        session = Session(email, secrets.token_urlsafe(32), now, now)
        self._by_digest[_digest(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        digest = _digest(token)
        session = self._by_digest.get(digest)
        if session is None:
            return None
        now = self.clock()
        if now - session.started > self.lifetime or now - session.seen > self.idle:
            del self._by_digest[digest]
            return None
        session.seen = now
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._by_digest.pop(_digest(token), None)

    def end_user(self, email: str) -> None:
        """Sign a user out everywhere (deleted, or no longer allowed)."""
        self._by_digest = {d: s for d, s in self._by_digest.items() if s.email != email}

    def _sweep(self, now: float) -> None:
        self._by_digest = {d: s for d, s in self._by_digest.items()
                           if now - s.started <= self.lifetime and now - s.seen <= self.idle}


class LoginThrottle:
    """At most `per_account` failed logins per account and `per_client` per client address
    within `window` seconds; past either, logins are refused (429) until the oldest
    failure leaves the window. A success clears the account's failures."""

    def __init__(self, per_account: int = 5, per_client: int = 20, window: float = 900.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.limits = {"account": per_account, "client": per_client}
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def retry_after(self, account: str, client: str) -> float:
        """Seconds until a login may be tried again; 0 when it may be tried now."""
        now = self.clock()
        wait = 0.0
        for kind, who in (("account", account), ("client", client)):
            times = self._recent((kind, who), now)
            if len(times) >= self.limits[kind]:
                wait = max(wait, self.window - (now - times[0]))
        return wait

    def failed(self, account: str, client: str) -> None:
        now = self.clock()
        if len(self._failures) >= self.max_keys:
            self._failures = {k: v for k, v in self._failures.items() if v and now - v[-1] < self.window}
        for key in (("account", account), ("client", client)):
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times

    def succeeded(self, account: str) -> None:
        self._failures.pop(("account", account), None)
