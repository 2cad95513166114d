"""Writes webhook events into ``raw.webhook_events`` through a pool of PostgreSQL connections.

One ``INSERT ... ON CONFLICT DO NOTHING`` per request (one statement for all the deliveries of a
WhatsApp batch), committed before the caller answers 2xx. Connections are opened lazily, so the
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
    """A small pool of PostgreSQL connections kept open between requests.

    (psycopg2's own ``ThreadedConnectionPool`` keeps at most ``minconn`` idle connections and
    closes every other one when it is returned, and it connects while holding its lock: with
    ``minconn=0`` every webhook paid for a new connection, one at a time.)

    Connections are opened lazily, outside the lock, at most ``max_connections`` at once; an
    idle one is reused, last returned first. A connection that failed is closed, and so is every
    idle one (they have most likely died with it, e.g. in a database restart).
    """

    def __init__(self, dsn: str, *, max_connections: int = 40) -> None:
        self._dsn = dsn
        self._max = max_connections
        self._idle: list[psycopg2.extensions.connection] = []
        self._lock = threading.Lock()
        # Waiting a little for a free connection is kinder than refusing at once.
        self._slots = threading.BoundedSemaphore(max_connections)

    # -- connections ---------------------------------------------------------------------------
    def _connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            self._dsn,
            connect_timeout=_CONNECT_TIMEOUT_S,
            options=f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}",
            application_name="cart-recovery-webhooks",
        )

    def _take(self, fresh: bool) -> psycopg2.extensions.connection:
        conn = None
        if not fresh:
            with self._lock:
                if self._idle:
                    conn = self._idle.pop()
        return conn if conn is not None else self._connect()

    def _give_back(self, conn: psycopg2.extensions.connection, broken: bool) -> None:
        if broken:
            self._discard_idle()
        elif not conn.closed and conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            with self._lock:
                self._idle.append(conn)
            return
        with contextlib.suppress(psycopg2.Error):
            conn.close()

    def _discard_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    @contextlib.contextmanager
    def connection(self, *, fresh: bool = False) -> Iterator[psycopg2.extensions.connection]:
        """A pooled connection inside a transaction: committed on success, rolled back on error.

        Any psycopg2 OperationalError/InterfaceError (server gone, restarted, unreachable) becomes
        DatabaseUnavailable and the connection is closed rather than returned to the pool.
        ``fresh`` opens a new connection instead of reusing an idle one.
        """
        if not self._slots.acquire(timeout=_POOL_WAIT_S):
            raise PoolExhausted(f"all {self._max} database connections stayed busy for {_POOL_WAIT_S} s")
        conn = None
        broken = False
        try:
            conn = self._take(fresh)
            if conn.closed:
                broken = True
                raise DatabaseUnavailable("pooled connection was closed")
            with conn:  # commit or roll back
                yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__) from exc
        finally:
            if conn is not None:
                self._give_back(conn, broken or bool(conn.closed))
            self._slots.release()

    def run(self, work):
        """Run ``work(conn)`` in a transaction; once more on a new connection if the pooled one
        turned out to be dead (after a database restart every idle connection is). Safe because
        everything written through here is idempotent (ON CONFLICT DO NOTHING)."""
        try:
            with self.connection() as conn:
                return work(conn)
        except PoolExhausted:
            raise
        except DatabaseUnavailable:
            log.info("Database connection failed; retrying once on a new connection")
        with self.connection(fresh=True) as conn:
            return work(conn)

    def close(self) -> None:
        """Close the idle connections (a later request opens new ones)."""
        self._discard_idle()

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
