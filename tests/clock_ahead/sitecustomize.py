"""Test only: this Python process's wall clock runs CHAOS_CLOCK_AHEAD_SECONDS ahead
(tests/test_chaos_stream.py puts this directory on PYTHONPATH of one worker).

A host whose clock runs ahead, as the worker's Python code sees it: time.time(),
time.time_ns() and datetime.now()/utcnow() are shifted; the monotonic clocks, C libraries
(librdkafka) and the broker keep the true time. libfaketime, which would shift the C
libraries too, hangs librdkafka here (its condition-variable waits never return)."""

from __future__ import annotations

import datetime as _dt
import os
import time as _time

_AHEAD = float(os.environ.get("CHAOS_CLOCK_AHEAD_SECONDS") or 0)

if _AHEAD:
    _time_time, _time_ns, _Real = _time.time, _time.time_ns, _dt.datetime

    class _AnyDatetime(type):
        # Code imported after this swap (fastavro, for one) checks isinstance(x, datetime):
        # every real datetime passes, as it would without the swap.
        def __instancecheck__(cls, obj: object) -> bool:
            return isinstance(obj, _Real)

        def __subclasscheck__(cls, sub: type) -> bool:
            return issubclass(sub, _Real)

    class _Ahead(_dt.datetime, metaclass=_AnyDatetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
            return _Real.fromtimestamp(_time_time() + _AHEAD, tz)

        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def,override]
            return _Real.fromtimestamp(_time_time() + _AHEAD, _dt.UTC).replace(tzinfo=None)

    _dt.datetime = _Ahead  # type: ignore[misc]
    _time.time = lambda: _time_time() + _AHEAD
    _time.time_ns = lambda: _time_ns() + int(_AHEAD * 1e9)
