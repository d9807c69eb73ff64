"""Dashboard accounts and shared links: made here, stored hashed (sinks/accountstore.py).

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second
recommended profile). A shared link carries `tsh_<link id>_<secret>`; only the
SHA-256 of the token is stored, as for API keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from tally.sinks.accountstore import ROLES, LinkRecord, UserRecord

SHARE_PREFIX = "tsh_"
_SHARE = re.compile(r"^tsh_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
MIN_PASSWORD = 10
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a login takes as long either way.
_DUMMY = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A user or link request that cannot be honoured; the message names the field."""


def new_user(email: str, password: str, role: str, sites: tuple[str, ...]) -> UserRecord:
    email = email.strip().lower()
    if not _EMAIL.match(email):
        raise AccountError(f"email: {email!r} is not an email address")
    if role not in ROLES:
        raise AccountError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters")
    if role == "viewer" and not sites:
        raise AccountError("site: a viewer needs at least one --site")
    return UserRecord(email, _hasher.hash(password), role, tuple(sites), datetime.now(UTC))


def password_ok(user: UserRecord | None, password: str) -> bool:
    """True when the password is the user's; as slow for a missing or deleted user."""
    try:
        if user is None or user.deleted_at is not None:
            _hasher.verify(_DUMMY, password)
            return False
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_link(site: str, name: str = "") -> tuple[str, LinkRecord]:
    """(the token, shown once in the URL; the record to store, with its hash only)."""
    if not site:
        raise AccountError("site: a shared link needs a site")
    link_id = secrets.token_hex(6)
    token = f"{SHARE_PREFIX}{link_id}_{secrets.token_urlsafe(32)}"
    return token, LinkRecord(link_id, hash_token(token), site, name, datetime.now(UTC))


def link_id_of(token: str) -> str | None:
    m = _SHARE.match(token)
    return m[1] if m else None


def link_ok(link: LinkRecord | None, token: str) -> bool:
    return link is not None and link.revoked_at is None and hmac.compare_digest(hash_token(token), link.token_hash)
