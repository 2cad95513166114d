"""Writes webhook events into ``raw.webhook_events`` through a pool of PostgreSQL connections.

One ``INSERT ... ON CONFLICT DO NOTHING`` per request (one statement for all the deliveries of a
WhatsApp batch), committed before the caller answers 2xx. The same statement stores the normal form
of the phone numbers in the payloads (``ops.phone_numbers``, see ``cart_recovery.phones``). The
shop platforms' ordinary deliveries go through :class:`GroupCommitter` instead: one thread inserts
the events of every request waiting at that moment in one statement and one transaction (a group
commit), and each request is answered only after that commit. Connections are opened lazily, so the
service starts (and answers 503) while the database is down, and a connection that failed is closed
and dropped from the pool instead of being handed out again, so the service reconnects by itself
once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
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
    # ops.phone_numbers rows (shop_id, raw, country, e164) of the phone numbers in the payload,
    # stored in the same statement as the event (cart_recovery.phones)
    phones: tuple[tuple[str, str, str, str | None], ...] = ()


_INSERT_MANY = (
    "insert into raw.webhook_events (platform, shop_id, topic, delivery_id, received_at, payload) "
    "values %s on conflict on constraint webhook_events_delivery_unique do nothing returning event_id"
)
_INSERT_ONE = _INSERT_MANY.replace("values %s", "values (%s, %s, %s, %s, %s, %s)")
_INSERT_MANY_KEYS = _INSERT_MANY.replace("returning event_id", "returning platform, shop_id, delivery_id")


def _with_phones(cur: psycopg2.extensions.cursor, sql: str, events: Sequence[WebhookEvent]) -> str:
    """``sql`` with the events' phone numbers written into ops.phone_numbers by the same statement
    (a data-modifying CTE): a build that reads the event finds its numbers, and the group commit
    keeps one round trip per group. ``sql`` keeps its one ``%s`` for the events' rows."""
    rows = sorted({row for event in events for row in event.phones})
    if not rows:
        return sql
    values = b",".join(cur.mogrify("(%s, %s, %s, %s)", row) for row in rows).decode()
    return (
        "with stored_phones as (insert into ops.phone_numbers (shop_id, raw, country, e164) values "
        + values.replace("%", "%%")
        + " on conflict (shop_id, raw) do nothing) "
        + sql
    )


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
        self._committer = GroupCommitter(self)

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
    def connection(
        self, *, fresh: bool = False, single_statement: bool = False
    ) -> Iterator[psycopg2.extensions.connection]:
        """A pooled connection inside a transaction: committed on success, rolled back on error.

        Any psycopg2 OperationalError/InterfaceError (server gone, restarted, unreachable) becomes
        DatabaseUnavailable and the connection is closed rather than returned to the pool.
        ``fresh`` opens a new connection instead of reusing an idle one. ``single_statement``: the
        caller runs one statement, which commits by itself (autocommit, no BEGIN/COMMIT round trips).
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
            if single_statement:
                conn.autocommit = True
                try:
                    yield conn
                finally:
                    if not conn.closed:
                        conn.autocommit = False
            else:
                with conn:  # commit or roll back
                    yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__) from exc
        finally:
            if conn is not None:
                self._give_back(conn, broken or bool(conn.closed))
            self._slots.release()

    def run(self, work, *, single_statement: bool = False):
        """Run ``work(conn)`` in a transaction; once more on a new connection if the pooled one
        turned out to be dead (after a database restart every idle connection is). Safe because
        everything written through here is idempotent (ON CONFLICT DO NOTHING)."""
        try:
            with self.connection(single_statement=single_statement) as conn:
                return work(conn)
        except PoolExhausted:
            raise
        except DatabaseUnavailable:
            log.info("Database connection failed; retrying once on a new connection")
        with self.connection(fresh=True, single_statement=single_statement) as conn:
            return work(conn)

    def close(self) -> None:
        """Stop the group-commit thread (after the events handed to it) and close the idle
        connections (a later request starts it again and opens new connections)."""
        self._committer.stop()
        self._discard_idle()

    # -- writes --------------------------------------------------------------------------------
    def insert(self, events: Sequence[WebhookEvent]) -> int:
        """Store the events; returns how many were new (the others were already stored)."""

        def work(conn: psycopg2.extensions.connection) -> int:
            with conn.cursor() as cur:
                if len(events) == 1:
                    cur.execute(_with_phones(cur, _INSERT_ONE, events), _row(events[0]))
                    return cur.rowcount
                rows = psycopg2.extras.execute_values(
                    cur, _with_phones(cur, _INSERT_MANY, events), [_row(e) for e in events], fetch=True
                )
                return len(rows)

        return self.run(work)

    def insert_new_keys(self, events: Sequence[WebhookEvent]) -> list[bool]:
        """Store the events in one statement and one transaction; for each, whether it was new.
        An event repeated inside ``events`` is new at most once (its first occurrence)."""

        def work(conn: psycopg2.extensions.connection) -> set[tuple[str, str, str]]:
            with conn.cursor() as cur:
                rows = psycopg2.extras.execute_values(
                    cur,
                    _with_phones(cur, _INSERT_MANY_KEYS, events),
                    [_row(e) for e in events],
                    page_size=len(events),
                    fetch=True,
                )
                return set(rows)

        # One statement is its own transaction: in autocommit it costs one round trip, where
        # BEGIN, INSERT, COMMIT cost three. Its rows come back only once it committed.
        inserted = self.run(work, single_statement=True)
        new = []
        for event in events:
            key = (event.platform, event.shop_id, event.delivery_id)
            new.append(key in inserted)
            inserted.discard(key)
        return new

    def insert_then(
        self,
        events: Sequence[WebhookEvent],
        on_new: Callable[[psycopg2.extensions.cursor, WebhookEvent], None],
    ) -> int:
        """Store the events and, in the same transaction, run ``on_new`` for each one that was new
        (never for a duplicate: its effects were applied when it was first stored); returns how
        many were new.

        Each ``on_new`` runs in a savepoint: one that fails for its data (a value PostgreSQL
        refuses, a constraint) is rolled back alone and logged, and the events are still stored
        (the raw row keeps what came, to be replayed once fixed; answering an error would make the
        sender retry forever). An unavailable database fails the whole transaction (503).
        """

        def work(conn: psycopg2.extensions.connection) -> int:
            with conn.cursor() as cur:
                rows = psycopg2.extras.execute_values(
                    cur,
                    _with_phones(cur, _INSERT_MANY_KEYS, events),
                    [_row(e) for e in events],
                    page_size=len(events),
                    fetch=True,
                )
                inserted = set(rows)
                new = 0
                for event in events:
                    key = (event.platform, event.shop_id, event.delivery_id)
                    if key not in inserted:
                        continue
                    inserted.discard(key)
                    new += 1
                    cur.execute("savepoint on_new")
                    try:
                        on_new(cur, event)
                    except (psycopg2.DataError, psycopg2.IntegrityError, ValueError) as exc:
                        cur.execute("rollback to savepoint on_new")
                        log.error(
                            "%s %s delivery %s stored, its effects not applied: %s",
                            event.platform,
                            event.topic,
                            event.delivery_id,
                            str(exc).strip(),
                        )
                    else:
                        cur.execute("release savepoint on_new")
                return new

        return self.run(work)

    def insert_async(self, event: WebhookEvent) -> asyncio.Future[bool]:
        """Hand the event to the group-commit thread; the future is True (new) or False
        (duplicate) once its transaction committed, or raises what :meth:`insert` would."""
        return self._committer.submit(event)

    def ping(self) -> bool:
        try:

            def work(conn):
                with conn.cursor() as cur:
                    cur.execute("select 1")

            self.run(work)
            return True
        except DatabaseUnavailable:
            return False


class GroupCommitter:
    """One thread that commits events for the event loop, many requests' events per transaction.

    It takes every event waiting (up to ``max_batch``), inserts them in one statement, commits,
    and only then resolves each request's future; while it commits, the next group gathers. So a
    burst costs PostgreSQL one commit (one WAL flush) per group instead of one per request, and
    the event loop never waits on the database or hands each request to a thread of its own.

    A group that fails for a reason of its rows (e.g. JSON that jsonb refuses) is retried one
    event per transaction, so only the bad event fails; a group that fails because the database
    is unavailable fails for every request in it (each is answered 503, nothing was committed).
    """

    def __init__(self, store: EventStore, *, max_batch: int = 256) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, event: WebhookEvent) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        self._queue.put((event, loop, future))
        return future

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="webhook-group-commit", daemon=True)
                self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(None)
        thread.join(timeout_s)

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            item = get()
            if item is None:
                return
            batch = [item]
            stopping = False
            while len(batch) < self._max_batch:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)
            if stopping:
                return

    def _commit(self, batch: list) -> None:
        events = [event for event, _loop, _future in batch]
        try:
            outcomes: list = self._store.insert_new_keys(events)
        except DatabaseUnavailable as exc:
            outcomes = [exc] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                outcomes = [exc]
            else:  # find the event(s) at fault: one transaction each
                outcomes = []
                for event in events:
                    try:
                        outcomes.append(self._store.insert([event]) == 1)
                    except Exception as single:
                        outcomes.append(single)
        for (_event, loop, future), outcome in zip(batch, outcomes, strict=True):
            with contextlib.suppress(RuntimeError):  # that event loop is closed
                loop.call_soon_threadsafe(_resolve, future, outcome)


def _resolve(future: asyncio.Future, outcome) -> None:
    if future.done():  # the request was cancelled (client gone); its event is committed anyway
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _row(event: WebhookEvent) -> tuple:
    return (event.platform, event.shop_id, event.topic, event.delivery_id, event.received_at, event.payload)


def insert_event(cur: psycopg2.extensions.cursor, event: WebhookEvent) -> int | None:
    """Insert one event with an open cursor; its event_id, or None when it was a duplicate."""
    cur.execute(_with_phones(cur, _INSERT_ONE, [event]), _row(event))
    row = cur.fetchone()
    return row[0] if row else None
