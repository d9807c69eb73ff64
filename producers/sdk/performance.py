"""track_performance(): seed 001's performance decorator, for service operations.

    from tally.producers.sdk.performance import track_performance

    @track_performance(client, "search_tickets")            # sync or async functions
    def search(...): ...

    with track_performance(client, "sync_mailbox", scope=("t1", "w1")):   # or async with
        ...

An operation slower than its threshold (TALLY_SDK_SLOW_OPERATION_MS, 500 ms by default;
`slow_ms=` per operation) emits `service_operation.slow`; one that raises emits
`service_operation.failed` with the exception's class (never its message), and the
exception propagates unchanged. Fast, successful operations emit nothing and cost two
clock reads.

The tenant scope is `scope=` (a (tenant_id, workspace_id) pair), or else the request
being handled (the request middleware puts it in the request context). An operation
with neither is not reported and is counted as dropped (no_scope).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

from tally.producers.sdk.client import Actor, Client
from tally.producers.sdk.context import current
from tally.producers.sdk.middleware import duration_bucket, error_type
from tally.schemas.catalog import CATALOG, check_metadata_value
from tally.schemas.reasons import DropReason

F = TypeVar("F", bound=Callable[..., Any])


class track_performance:  # noqa: N801 - used as a decorator, named like one
    """Decorator and (async) context manager; see the module docstring."""

    def __init__(self, client: Client, operation: str, *, scope: tuple[str, str] | None = None,
                 slow_ms: int | None = None, actor: Actor | None = None) -> None:
        # A bad operation name is the programmer's error, found at decoration time.
        bad = check_metadata_value("service_operation.slow", "operation", operation)
        if bad is not None:
            raise ValueError(bad[1])
        self.client = client
        self.operation = operation
        self.scope = scope
        settings = getattr(client, "settings", None)
        self.slow_ms = slow_ms if slow_ms is not None else getattr(settings, "sdk_slow_operation_ms", 500)
        if not 0 < self.slow_ms <= CATALOG["service_operation.slow"].props["threshold_ms"].max:
            raise ValueError(f"slow_ms must be within 1..3600000, got {self.slow_ms}")
        self.actor = actor or Actor("service", client.app or "")
        self._started: list[float] = []  # a stack: the same object may be entered re-entrantly

    # --- context manager -------------------------------------------------------------

    def __enter__(self) -> track_performance:
        self._started.append(perf_counter())
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.finished(perf_counter() - self._started.pop(), exc)

    async def __aenter__(self) -> track_performance:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    # --- decorator -------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t0 = perf_counter()
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    self.finished(perf_counter() - t0, exc)
                    raise
                self.finished(perf_counter() - t0, None)
                return result

            return timed_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = perf_counter()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                self.finished(perf_counter() - t0, exc)
                raise
            self.finished(perf_counter() - t0, None)
            return result

        return timed  # type: ignore[return-value]

    # --- reporting -------------------------------------------------------------------

    def finished(self, seconds: float, exc: BaseException | None) -> None:
        """Report one finished operation when it was slow or failed; never raises."""
        ms = int(seconds * 1000)
        if exc is None and ms < self.slow_ms:
            return
        if exc is not None and not isinstance(exc, Exception):  # KeyboardInterrupt, cancellation...
            return
        try:
            where = self.scope
            if where is None:
                ctx = current()
                where = ctx.scope if ctx is not None else None
            if where is None:
                self.client.count_drop(DropReason.NO_SCOPE, f"{self.operation}: no tenant scope")
                return
            tenant_id, workspace_id = where
            meta: dict[str, Any] = {"operation": self.operation, "duration_ms": min(ms, 7 * 86_400_000)}
            if exc is not None:
                meta |= {"error_type": error_type(exc), "success": False}
                event = "service_operation.failed"
            else:
                meta |= {"threshold_ms": self.slow_ms, "duration_bucket": duration_bucket(seconds),
                         "success": True}
                event = "service_operation.slow"
            self.client.track(event, tenant_id=tenant_id, workspace_id=workspace_id, actor=self.actor,
                              metadata=meta)
        except Exception:  # reporting must never break the operation's caller
            self.client.count_drop(DropReason.MIDDLEWARE_ERROR, f"{self.operation}: could not report")
