"""SQL text for ClickHouse: the one way a value becomes a string literal."""

from __future__ import annotations


def quote(text: str) -> str:
    """`text` as a ClickHouse string literal, backslashes and single quotes escaped."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
