"""Writes of the polling path: raw records, quarantine, watermarks and the validation report."""

from __future__ import annotations

import json
from datetime import datetime

import psycopg2.extensions
from psycopg2.extras import execute_values

from cart_recovery.platforms.base import PolledRecord


def _json(payload: dict) -> str:
    # PostgreSQL's jsonb cannot hold \u0000; the escape is kept as text so nothing is lost.
    return json.dumps(payload, ensure_ascii=False, default=str).replace("\\u0000", "\\\\u0000")


def insert_records(
    cur: psycopg2.extensions.cursor,
    *,
    platform: str,
    shop_id: str,
    records: list[PolledRecord],
    fetched_at: datetime,
) -> int:
    """Insert record versions not stored yet; returns how many were new."""
    if not records:
        return 0
    rows = [
        (platform, shop_id, r.entity, r.record_id, r.updated_at, fetched_at, _json(r.payload))
        for r in records
    ]
    inserted = execute_values(
        cur,
        """
        insert into raw.polled_records
            (platform, shop_id, entity, record_id, record_updated_at, fetched_at, payload)
        values %s
        on conflict (shop_id, entity, record_id, record_updated_at) do nothing
        returning 1
        """,
        rows,
        template="(%s, %s, %s, %s, %s, %s, %s::jsonb)",
        page_size=len(rows),
        fetch=True,
    )
    return len(inserted)


def quarantine(
    cur: psycopg2.extensions.cursor,
    *,
    platform: str,
    shop_id: str,
    rejected: list[tuple[PolledRecord, list[str]]],
    interval_end: datetime,
    quarantined_at: datetime,
) -> int:
    """Store rejected records with their reasons; a version already quarantined is stored once."""
    if not rejected:
        return 0
    rows = [
        (
            platform,
            shop_id,
            r.entity,
            r.record_id,
            r.updated_at,
            reasons,
            _json(r.payload),
            interval_end,
            quarantined_at,
        )
        for r, reasons in rejected
    ]
    inserted = execute_values(
        cur,
        """
        insert into ops.quarantine
            (platform, shop_id, entity, record_id, record_updated_at, reasons, payload, interval_end,
             quarantined_at)
        values %s
        on conflict (shop_id, entity, payload_md5) do nothing
        returning 1
        """,
        rows,
        template="(%s, %s, %s, %s, %s, %s::text[], %s::jsonb, %s, %s)",
        page_size=len(rows),
        fetch=True,
    )
    return len(inserted)


def read_watermark(cur: psycopg2.extensions.cursor, shop_id: str, entity: str) -> datetime | None:
    cur.execute(
        "select watermark from ops.ingest_watermarks where shop_id = %s and entity = %s", (shop_id, entity)
    )
    row = cur.fetchone()
    return row[0] if row else None


def advance_watermark(
    cur: psycopg2.extensions.cursor, shop_id: str, entity: str, watermark: datetime, recorded_at: datetime
) -> None:
    """Move the watermark forward (never back: a re-run of an older interval cannot rewind it)."""
    cur.execute(
        """
        insert into ops.ingest_watermarks (shop_id, entity, watermark, updated_at)
        values (%s, %s, %s, %s)
        on conflict (shop_id, entity) do update
            set watermark = greatest(ops.ingest_watermarks.watermark, excluded.watermark),
                updated_at = excluded.updated_at
        """,
        (shop_id, entity, watermark, recorded_at),
    )


def record_run(
    cur: psycopg2.extensions.cursor,
    *,
    shop_id: str,
    entity: str,
    platform: str,
    interval_end: datetime,
    window_start: datetime | None,
    counts: dict,
    failures: dict,
    watermark: datetime | None,
    finished_at: datetime,
) -> None:
    cur.execute(
        """
        insert into ops.validation_runs
            (shop_id, entity, interval_end, platform, window_start, fetched, loaded, unchanged,
             quarantined, failures, watermark, finished_at)
        values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)
        on conflict (shop_id, entity, interval_end) do update set
            window_start = excluded.window_start, fetched = excluded.fetched, loaded = excluded.loaded,
            unchanged = excluded.unchanged, quarantined = excluded.quarantined,
            failures = excluded.failures, watermark = excluded.watermark,
            attempts = ops.validation_runs.attempts + 1, finished_at = excluded.finished_at
        """,
        (
            shop_id,
            entity,
            interval_end,
            platform,
            window_start,
            counts["fetched"],
            counts["loaded"],
            counts["unchanged"],
            counts["quarantined"],
            json.dumps(failures),
            watermark,
            finished_at,
        ),
    )
