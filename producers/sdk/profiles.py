"""Collection profiles (seed 001: "different data collection for hosted vs on-premise").

- `hosted`: ids are sent as the application gives them (opaque ids, checked by the catalog).
- `on_premise`: actor and subject ids are replaced by keyed pseudonyms before the event is
  judged, so the analytics pipeline never holds the installation's own ids. The key is
  generated once in the state directory (mode 0600) and never sent; the same id always
  maps to the same pseudonym, so counts of distinct actors stay right. The request
  middleware sends per-minute route rollups only (no per-request events).
"""

from __future__ import annotations

import hashlib
from typing import Any

from tally.caches import bounded_put
from tally.config import Settings
from tally.secrets import file_secret

HOSTED, ON_PREMISE = "hosted", "on_premise"
_CACHE_MAX = 16384


class Pseudonyms:
    """id -> "p_" + 24 hex digits of keyed BLAKE2b; cached (bounded)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[str, str] = {}

    @classmethod
    def for_installation(cls, settings: Settings) -> Pseudonyms:
        return cls(file_secret(settings.state_dir / "secrets" / "sdk_pseudonym.key"))

    def id(self, value: Any) -> Any:
        """The pseudonym of a non-empty string id; anything else unchanged (the catalog judges it)."""
        if value.__class__ is not str or not value:
            return value
        p = self._cache.get(value)
        if p is None:
            p = "p_" + hashlib.blake2b(value.encode(), key=self._key, digest_size=12).hexdigest()
            bounded_put(self._cache, value, p, _CACHE_MAX)
        return p

    def actor(self, actor: Any) -> Any:
        if actor.__class__ is str:
            return self.id(actor)
        if isinstance(actor, tuple) and len(actor) == 2:
            return actor.__class__(actor[0], self.id(actor[1])) if hasattr(actor, "_fields") \
                else (actor[0], self.id(actor[1]))
        return actor

    def subject(self, subject: Any) -> Any:
        return self.actor(subject) if isinstance(subject, tuple) else subject
