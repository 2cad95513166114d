"""Poll one shop: stream each entity from its watermark to the run's interval end, validate and
load it in batches, then advance the watermark.

Idempotence: a record version is stored once (``on conflict do nothing`` on shop, entity, id and
update time), a quarantined version once, and the watermark only moves forward, so re-running
an interval changes nothing. The window starts at the watermark itself (inclusive), so records
sharing the watermark's timestamp are never skipped; the overlap is absorbed by the load.

Time: the window ends at ``interval_end`` (the DAG run's data interval end), never at now(); the
new watermark is the newest update time seen, bounded by ``interval_end``. It is written only
after every batch of the entity has been committed: a run that fails half-way leaves the
watermark where it was and the retry re-fetches (and skips) what was already stored.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from itertools import islice

import psycopg2

from cart_recovery import phones
from cart_recovery.ingest import store
from cart_recovery.ingest.validation import prepare as prepare_validation
from cart_recovery.ingest.validation import validate_batch
from cart_recovery.platforms import PlatformClient, PolledRecord, Window, client_for
from cart_recovery.shops import Shop

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 2_000
PREFETCH_BATCHES = 2  # batches fetched ahead of the one being validated and loaded


def _batches(records: Iterable[PolledRecord], size: int) -> Iterator[list[PolledRecord]]:
    iterator = iter(records)
    while batch := list(islice(iterator, size)):
        yield batch


_DONE = object()


def _prefetched(batches: Iterator[list], depth: int = PREFETCH_BATCHES) -> Iterator[list]:
    """Yield ``batches`` while a background thread already fetches the next ones.

    The shop's API answers (and its pages are decoded and converted) while this thread validates
    and loads the previous batch. The queue holds at most ``depth`` batches, so memory stays
    bounded: at most ``depth`` queued + one being built + one being loaded. An error in the
    fetching thread is raised here, in the caller; when the caller stops early (an error while
    loading, or ``close()``), the fetching thread is told to stop and is joined, and the
    client's generator is closed in the thread that ran it.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="poll-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _dedupe(batch: list[PolledRecord]) -> list[PolledRecord]:
    """Drop exact repeats of a version within a batch (offset paging can return one twice).

    The payloads are compared (by ``repr``) only among records sharing id and update time.
    """
    first: dict[tuple, PolledRecord] = {}
    payloads: dict[tuple, set[str]] = {}
    unique = []
    for record in batch:
        key = (record.record_id, record.updated_at)
        earlier = first.get(key)
        if earlier is None:
            first[key] = record
            unique.append(record)
            continue
        seen = payloads.get(key)
        if seen is None:
            seen = payloads[key] = {repr(earlier.payload)}
        text = repr(record.payload)
        if text not in seen:
            seen.add(text)
            unique.append(record)
    return unique


def ingest_entity(
    client: PlatformClient,
    conn: psycopg2.extensions.connection,
    entity: str,
    *,
    interval_end: datetime,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    shop = client.shop
    with conn.cursor() as cur:
        since = store.read_watermark(cur, shop.id, entity)
    conn.commit()
    counts = Counter(fetched=0, loaded=0, unchanged=0, quarantined=0)
    failures: Counter = Counter()
    newest: datetime | None = None
    if since is not None and since >= interval_end:
        log.info(
            "%s %s: watermark %s is at or past the interval end; nothing to fetch",
            shop.id,
            entity,
            since.isoformat(),
        )
    else:
        window = Window(since=since, until=interval_end)
        batches = _prefetched(_batches(client.fetch(entity, window), batch_size))
        with closing(batches):  # stops and joins the fetching thread if a load fails
            for batch in batches:
                batch = _dedupe(batch)
                if batch:
                    _prepare_validation_once(entity)
                verdict = validate_batch(entity, batch, interval_end, shop.country)
                fetched_at = datetime.now(UTC)  # audit only: when the rows arrived
                with conn, conn.cursor() as cur:
                    # the normal form of the batch's phone numbers, committed with the records
                    phones.record_payload_phones(cur, shop.id, shop.country, [r.payload for r in batch])
                    loaded = store.insert_records(
                        cur,
                        platform=shop.platform.value,
                        shop_id=shop.id,
                        records=verdict.good,
                        fetched_at=fetched_at,
                    )
                    store.quarantine(
                        cur,
                        platform=shop.platform.value,
                        shop_id=shop.id,
                        rejected=verdict.bad,
                        interval_end=interval_end,
                        quarantined_at=fetched_at,
                    )
                counts["fetched"] += len(batch)
                counts["loaded"] += loaded
                counts["unchanged"] += len(verdict.good) - loaded
                counts["quarantined"] += len(verdict.bad)
                failures.update(verdict.failures)
                stamps = [
                    r.updated_at for r in batch if r.updated_at is not None and r.updated_at <= interval_end
                ]
                if stamps:
                    newest = max([*stamps, newest] if newest else stamps)
    watermark = min(newest, interval_end) if newest else since
    with conn, conn.cursor() as cur:
        if newest is not None:
            store.advance_watermark(cur, shop.id, entity, watermark, datetime.now(UTC))
        store.record_run(
            cur,
            shop_id=shop.id,
            entity=entity,
            platform=shop.platform.value,
            interval_end=interval_end,
            window_start=since,
            counts=counts,
            failures=dict(failures),
            watermark=watermark,
            finished_at=datetime.now(UTC),
        )
    summary = {**counts, "failures": dict(failures), "window_start": since, "watermark": watermark}
    log.info(
        "%s %s: fetched %d, loaded %d, unchanged %d, quarantined %d %s; watermark %s",
        shop.id,
        entity,
        counts["fetched"],
        counts["loaded"],
        counts["unchanged"],
        counts["quarantined"],
        dict(failures) or "",
        watermark.isoformat() if watermark else None,
    )
    return summary


@contextmanager
def _long_lived_heap_frozen() -> Iterator[None]:
    """Keep the cyclic garbage collector off the heap that exists before polling starts.

    A task process holds hundreds of thousands of long-lived objects (Airflow, pandas,
    great-expectations and its suites). Decoding a page allocates tens of thousands of
    containers, which triggers full collections, and every one of them walked that whole heap
    again: measured, a third of the poll's time went to it. ``gc.freeze()`` (after collecting
    what is already garbage) moves that heap out of the collector's sight for the duration of
    the poll; reference counting still frees everything as usual, and the records of the poll
    itself are still collected. The heap is handed back to the collector afterwards.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


_PREPARED: set[str] = set()


def _prepare_validation_once(entity: str) -> None:
    """Build ``entity``'s suite (importing great-expectations) at its first non-empty batch.

    A poll that finds nothing new never imports great-expectations: that import is most of a
    task's time (about 8 s here). What it loads is long-lived, so it joins the frozen heap.
    """
    if entity not in _PREPARED:
        prepare_validation([entity])
        gc.freeze()
        _PREPARED.add(entity)


def warehouse_url(conn_id: str | None = None) -> str:
    """The warehouse as a libpq URL, from its Airflow connection (``cart_recovery_warehouse``)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from sqlalchemy.engine import make_url

    from cart_recovery import settings

    uri = PostgresHook(postgres_conn_id=conn_id or settings.WAREHOUSE_CONN_ID).get_uri()
    return make_url(uri).set(drivername="postgresql").render_as_string(hide_password=False)


def ingest_shop(
    shop: Shop,
    *,
    interval_end: datetime,
    conn_url: str,
    entities: Iterable[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    client: PlatformClient | None = None,
) -> dict:
    """Poll every entity of ``shop`` up to ``interval_end`` into ``raw.polled_records``.

    Returns ``{entity: {fetched, loaded, unchanged, quarantined, failures, window_start,
    watermark}}`` plus the client's request counts under ``"http"``.
    """
    if interval_end.tzinfo is None:
        raise ValueError("interval_end must be timezone-aware (the DAG run's data_interval_end)")
    client = client or client_for(shop)
    chosen = list(entities) if entities is not None else list(client.entities)
    unknown = [e for e in chosen if e not in client.entities]
    if unknown:
        raise ValueError(f"{shop.platform} shops are not polled for {unknown}; choose from {client.entities}")
    report: dict = {}
    conn = psycopg2.connect(conn_url)
    try:
        with _long_lived_heap_frozen():
            for entity in chosen:
                report[entity] = ingest_entity(
                    client, conn, entity, interval_end=interval_end, batch_size=batch_size
                )
    finally:
        conn.close()
    report["http"] = dict(client.stats)
    return report
