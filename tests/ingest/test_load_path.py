"""The polling load path's pieces: the prefetching thread, the COPY load and the dedupe."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from cart_recovery.ingest import store
from cart_recovery.ingest.poll import _dedupe, _prefetched
from cart_recovery.platforms import PolledRecord

END = datetime(2025, 11, 24, 12, tzinfo=UTC)
SHOP = "load-path-test-shop"


def test_prefetch_yields_every_batch_in_order():
    assert list(_prefetched(iter([[1], [2, 3], [4]]), depth=1)) == [[1], [2, 3], [4]]


def test_prefetch_raises_the_fetching_error_in_the_caller():
    class Boom(Exception):
        pass

    def batches():
        yield [1]
        raise Boom("the shop is down")

    got = []
    with pytest.raises(Boom, match="the shop is down"):
        for batch in _prefetched(batches()):
            got.append(batch)
    assert got == [[1]]


def test_prefetch_stops_the_fetching_thread_when_the_caller_stops():
    produced = []
    closed = threading.Event()

    def batches():
        try:
            for n in range(1_000):
                produced.append(n)
                yield [n]
        finally:
            closed.set()

    stream = _prefetched(batches(), depth=2)
    assert next(stream) == [0]
    stream.close()  # as when a load fails
    assert closed.is_set()  # the client's generator was closed, the thread joined
    assert len(produced) <= 5  # bounded: it never ran ahead of the queue


def _record(record_id: str, payload: dict, minutes: int = 0) -> PolledRecord:
    return PolledRecord(
        entity="cart",
        record_id=record_id,
        updated_at=END - timedelta(minutes=minutes),
        payload=payload,
    )


def test_copy_load_keeps_awkward_text_and_is_idempotent(database, warehouse):
    payloads = {
        "1": {"id": 1, "note": 'tab\there, newline\nthere, cr\r, back\\slash, quote "', "name": "Şule Ağaç"},
        "2": {"id": 2, "nul": "a\u0000b", "emoji": "🛒", "nested": {"list": [1, 2.5, None, True]}},
        "3\tx\\y": {"id": 3},
    }
    records = [_record(rid, payload) for rid, payload in payloads.items()]
    with warehouse, warehouse.cursor() as cur:
        cur.execute("delete from raw.polled_records where shop_id = %s", (SHOP,))
    try:
        with warehouse, warehouse.cursor() as cur:
            assert (
                store.insert_records(cur, platform="shopify", shop_id=SHOP, records=records, fetched_at=END)
                == 3
            )
        with warehouse, warehouse.cursor() as cur:  # the same versions again: nothing new
            assert (
                store.insert_records(cur, platform="shopify", shop_id=SHOP, records=records, fetched_at=END)
                == 0
            )
            # a new version of one record, in a batch with an unchanged one
            assert (
                store.insert_records(
                    cur,
                    platform="shopify",
                    shop_id=SHOP,
                    records=[records[0], _record("1", {"id": 1}, minutes=-1)],
                    fetched_at=END,
                )
                == 1
            )
        with warehouse.cursor() as cur:
            cur.execute(
                "select record_id, payload, record_updated_at from raw.polled_records "
                "where shop_id = %s and record_updated_at = %s",
                (SHOP, END),
            )
            stored = {row[0]: row[1] for row in cur.fetchall()}
        warehouse.rollback()
        assert set(stored) == set(payloads)
        assert stored["1"] == payloads["1"]
        assert stored["3\tx\\y"] == {"id": 3}
        # jsonb cannot hold \u0000: it is kept as the escape text, as before
        assert stored["2"] == {**payloads["2"], "nul": "a\\u0000b"}
    finally:
        with warehouse, warehouse.cursor() as cur:
            cur.execute("delete from raw.polled_records where shop_id = %s", (SHOP,))


def test_copy_load_refuses_autocommit(database, warehouse):
    warehouse.autocommit = True
    try:
        with warehouse.cursor() as cur, pytest.raises(ValueError, match="transaction"):
            store.insert_records(
                cur, platform="shopify", shop_id=SHOP, records=[_record("1", {})], fetched_at=END
            )
    finally:
        warehouse.autocommit = False


def test_dedupe_drops_only_exact_repeats():
    a = _record("1", {"v": 1})
    same = _record("1", {"v": 1})
    different_payload = _record("1", {"v": 2})
    other_version = _record("1", {"v": 1}, minutes=5)
    assert _dedupe([a, same, different_payload, other_version, same]) == [a, different_payload, other_version]
