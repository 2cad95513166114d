"""Writes webhook events into ``raw.webhook_events`` through a pool of PostgreSQL connections.

One ``INSERT ... ON CONFLICT DO NOTHING`` per request (one statement for all the deliveries of a
WhatsApp batch), committed before the caller answers 2xx. The pool is created lazily, so the
service starts (and answers 503) while the database is down, and a connection that failed is
closed and dropped from the pool instead of being handed out again, so the service reconnects by
itself once the database is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

log = logging.getLogger(__name__)

# A request must finish well inside Shopify's 5 s: give up on the database before that.
_CONNECT_TIMEOUT_S = 3
_STATEMENT_TIMEOUT_MS = 4000
_POOL_WAIT_S = 3.0


class DatabaseUnavailable(Exception):
    """The event could not be committed; the caller answers 503 so the platform retries."""


class PoolExhausted(DatabaseUnavailable):
    """Every pooled connection stayed busy for the whole wait; retrying at once would not help."""


@dataclass(frozen=True)
class WebhookEvent:
    platform: str
    shop_id: str
    topic: str
    delivery_id: str
    received_at: datetime
    payload: str  # the JSON text as received; PostgreSQL parses it into jsonb


_INSERT_MANY = (
    "insert into raw.webhook_events (platform, shop_id, topic, delivery_id, received_at, payload) "
    "values %s on conflict on constraint webhook_events_delivery_unique do nothing returning event_id"
)
_INSERT_ONE = _INSERT_MANY.replace("values %s", "values (%s, %s, %s, %s, %s, %s)")


class EventStore:
    def __init__(self, dsn: str, *, max_connections: int = 40) -> None:
        self._dsn = dsn
        self._max = max_connections
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._pool_lock = threading.Lock()
        # ThreadedConnectionPool raises at once when exhausted; waiting a little is kinder.
        self._slots = threading.BoundedSemaphore(max_connections)

    # -- connections ---------------------------------------------------------------------------
    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = psycopg2.pool.ThreadedConnectionPool(
                        0,
                        self._max,
                        self._dsn,
                        connect_timeout=_CONNECT_TIMEOUT_S,
                        options=f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}",
                        application_name="cart-recovery-webhooks",
                    )
        return self._pool

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """A pooled connection inside a transaction: committed on success, rolled back on error.

        Any psycopg2 OperationalError/InterfaceError (server gone, restarted, unreachable) becomes
        DatabaseUnavailable and the connection is closed rather than returned to the pool.
        """
        if not self._slots.acquire(timeout=_POOL_WAIT_S):
            raise PoolExhausted(f"all {self._max} database connections stayed busy for {_POOL_WAIT_S} s")
        conn = None
        broken = False
        try:
            pool = self._get_pool()
            conn = pool.getconn()
            if conn.closed:
                broken = True
                raise DatabaseUnavailable("pooled connection was closed")
            with conn:  # commit or roll back
                yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__) from exc
        finally:
            if conn is not None and self._pool is not None:
                with contextlib.suppress(psycopg2.pool.PoolError):  # the pool was closed meanwhile
                    self._pool.putconn(conn, close=broken or bool(conn.closed))
            self._slots.release()

    def run(self, work):
        """Run ``work(conn)`` in a transaction; once more on a fresh connection if the pooled one
        turned out to be dead (after a database restart every idle connection is). Safe because
        everything written through here is idempotent (ON CONFLICT DO NOTHING)."""
        try:
            with self.connection() as conn:
                return work(conn)
        except PoolExhausted:
            raise
        except DatabaseUnavailable:
            log.info("Database connection failed; retrying once on a new connection")
        with self.connection() as conn:
            return work(conn)

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None

    # -- writes --------------------------------------------------------------------------------
    def insert(self, events: Sequence[WebhookEvent]) -> int:
        """Store the events; returns how many were new (the others were already stored)."""

        def work(conn: psycopg2.extensions.connection) -> int:
            with conn.cursor() as cur:
                if len(events) == 1:
                    cur.execute(_INSERT_ONE, _row(events[0]))
                    return cur.rowcount
                rows = psycopg2.extras.execute_values(
                    cur, _INSERT_MANY, [_row(e) for e in events], fetch=True
                )
                return len(rows)

        return self.run(work)

    def ping(self) -> bool:
        try:

            def work(conn):
                with conn.cursor() as cur:
                    cur.execute("select 1")

            self.run(work)
            return True
        except DatabaseUnavailable:
            return False


def _row(event: WebhookEvent) -> tuple:
    return (event.platform, event.shop_id, event.topic, event.delivery_id, event.received_at, event.payload)


def insert_event(cur: psycopg2.extensions.cursor, event: WebhookEvent) -> int | None:
    """Insert one event with an open cursor; its event_id, or None when it was a duplicate."""
    cur.execute(_INSERT_ONE, _row(event))
    row = cur.fetchone()
    return row[0] if row else None
