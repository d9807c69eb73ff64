"""Engagement events (Plausible's `engagement`: a page view's scroll depth and engaged time).

They travel as events named `engagement` whose props hold the two figures under reserved
names (no schema change); they are neither pageviews nor custom events, so every count of
events, pageviews, visitors and visits leaves them out (`COUNTED` in SQL), and only the
`time_on_page` and `scroll_depth` metrics read them.
"""

ENGAGEMENT = "engagement"
RESERVED_PREFIX = "tally:"  # prop names only the collector sets; a beacon that sends one is refused
SCROLL_DEPTH = "tally:scroll_depth"  # percent, 0..100
ENGAGED_MS = "tally:engaged_ms"  # milliseconds, 0..MAX_ENGAGED_MS
MAX_ENGAGED_MS = 30 * 60 * 1000  # one event's engaged time is clamped to this (the default session timeout)
COUNTED = f"event != '{ENGAGEMENT}'"  # the rows that count as events (SQL over `pageviews`)
