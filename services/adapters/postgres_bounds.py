"""Bounds on the PostgreSQL statements a call waits on: the view's reads, a write's
lookups, the access log's records and the subject keys. Each gives up after the
store's ``timeout`` and raises ``StoreUnavailable``, even when the server is frozen."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import asyncpg

from services.errors import StoreUnavailable

log = logging.getLogger(__name__)


class Timed(Protocol):
    _timeout: float | None
    """Seconds a bounded statement may take; None: unbounded."""


S = TypeVar("S", bound=Timed)
P = ParamSpec("P")
R = TypeVar("R")


def bounded(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """A read that a call waits on gives up after the view's ``timeout``, waiting for a
    connection included, and raises ``StoreUnavailable``.

    The read runs as a task of its own that the caller stops waiting for: a frozen
    server (SIGSTOP) answers nothing, not even the cancellation asyncpg sends on a
    timeout of its own or on a cancelled call, and asyncpg waits for that answer
    before it gives the connection back, so neither ``command_timeout`` nor
    cancelling the caller returns in time. The task is cancelled and finishes when
    the server answers again."""

    return _bounded(method, 1)


BULK_BOUND = 20
"""A bulk import's statements (``request_uses``, ``claim_requests``, ``known_events``:
a thousand rows each) may take this many times the view's ``timeout``."""


def bounded_bulk(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """``bounded``, for a statement of a thousand rows: ``BULK_BOUND`` times the bound."""
    return _bounded(method, BULK_BOUND)


async def fetch_bulk(
    pool: asyncpg.Pool, timeout: float | None, query: str, *args: Any
) -> list[asyncpg.Record]:
    """``pool.fetch`` of a ``bounded_bulk`` statement. The read pools make the server
    cancel a statement at the single statements' bound (``read_pool``): here that
    limit is lifted to ``BULK_BOUND`` times it for this statement alone (``SET LOCAL``,
    in a transaction of its own), or a thousand rows on a busy server would be
    cancelled long before the caller's own bound."""
    rows: list[asyncpg.Record]
    if timeout is None:
        rows = await pool.fetch(query, *args)
        return rows
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            f"SET LOCAL statement_timeout = {max(1, round(timeout * BULK_BOUND * 1000))}"
        )
        rows = await conn.fetch(query, *args)
        return rows


def _bounded(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, R]], factor: float
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    @functools.wraps(method)
    async def bounded_method(view: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if view._timeout is None:
            return await method(view, *args, **kwargs)
        read = asyncio.ensure_future(method(view, *args, **kwargs))
        try:
            done, _ = await asyncio.wait({read}, timeout=view._timeout * factor)
        except asyncio.CancelledError:
            read.cancel()
            raise
        setting = f"CONSENT_POSTGRES_TIMEOUT_MS{f' x {factor:g}' if factor != 1 else ''}"
        if not done:
            read.cancel()
            read.add_done_callback(_retrieve)
            raise StoreUnavailable(
                f"PostgreSQL did not answer within {view._timeout * factor:g} s"
                f" ({setting}; {method.__name__})"
            )
        try:
            return read.result()
        except asyncpg.QueryCanceledError as exc:  # the server's own limit (``read_pool``)
            raise StoreUnavailable(
                f"PostgreSQL cancelled {method.__name__} at its statement timeout ({setting})"
            ) from exc
        except Exception as exc:
            if not _an_outage(exc):
                raise
            raise StoreUnavailable(
                f"PostgreSQL failed in {method.__name__}: {type(exc).__name__}: {exc}"
            ) from exc

    return bounded_method


_OUTAGE_CLASSES = ("08", "53", "57", "58")
"""SQLSTATE classes of a server that cannot do the work now, whatever the request:
connection exceptions, insufficient resources (a full disk, too many connections),
operator intervention (a shutdown, a server starting) and system errors (I/O)."""


def _an_outage(exc: BaseException) -> bool:
    """Whether a statement's failure is the database's state, not the statement's: a
    full disk or a refused connection must say STORE_UNAVAILABLE and that a retry
    helps, not pass for the ledger being unreachable; a bug (a bad query) must not."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresConnectionError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, asyncpg.PostgresError) and str(sqlstate)[:2] in _OUTAGE_CLASSES


def _retrieve(read: asyncio.Future[Any]) -> None:
    """Take the outcome of a read nobody waits for any more, so it is not logged."""
    if not read.cancelled():
        read.exception()


CLOSE_WITHIN_S = 5.0
"""How long closing a pool waits for its connections to say goodbye."""


async def close_pool(pool: asyncpg.Pool, within: float = CLOSE_WITHIN_S) -> None:
    """Close ``pool`` gracefully, or drop its connections after ``within`` seconds.

    asyncpg's ``Pool.close()`` has no bound of its own: a connection waiting for the
    server to acknowledge a cancelled statement (a server frozen; once, an idle
    server, most likely because the cancel came after its statement ended) waits
    forever, and a service told to stop did not stop. asyncpg advises bounding it;
    past the bound it terminates the pool itself."""
    try:
        await asyncio.wait_for(pool.close(), within)
    except TimeoutError:
        log.warning("PostgreSQL pool not closed within %g s: its connections dropped", within)
