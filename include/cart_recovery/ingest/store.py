"""Writes of the polling path: raw records, quarantine, watermarks and the validation report."""

from __future__ import annotations

import io
import json
from datetime import datetime

import psycopg2.extensions
from psycopg2.extras import execute_values

from cart_recovery.platforms.base import PolledRecord

try:  # msgspec (installed with Airflow) encodes a payload about 5x faster than json.dumps
    import msgspec

    _encoder = msgspec.json.Encoder(enc_hook=str)

    def _dumps(payload: dict) -> str:
        # The clients' payloads are decoded JSON (dict, list, str, int, float, bool, None), which
        # both encoders write alike; anything msgspec refuses goes through json.dumps as before.
        try:
            return _encoder.encode(payload).decode()
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            return json.dumps(payload, ensure_ascii=False, default=str)

except ImportError:  # pragma: no cover

    def _dumps(payload: dict) -> str:
        return json.dumps(payload, ensure_ascii=False, default=str)


def _json(payload: dict) -> str:
    # PostgreSQL's jsonb cannot hold \u0000; the escape is kept as text so nothing is lost.
    return _dumps(payload).replace("\\u0000", "\\\\u0000")


_COPY_SPECIAL = ("\\", "\t", "\n", "\r")


def _copy_text(value: str | None) -> str:
    """One field of PostgreSQL's COPY text format (``\\N`` is NULL)."""
    if value is None:
        return "\\N"
    if any(c in value for c in _COPY_SPECIAL):
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _copy_json(payload: dict) -> str:
    """The payload's JSON as a COPY text field: JSON text has no raw tab, newline or carriage
    return (json.dumps escapes them inside strings), so only backslashes need doubling."""
    return _json(payload).replace("\\", "\\\\")


def _staging_table(cur: psycopg2.extensions.cursor) -> None:
    """The session's staging table for COPY; emptied at every commit (one batch per transaction)."""
    cur.execute(
        """
        create temporary table if not exists polled_records_staging (
            entity            text,
            record_id         text,
            record_updated_at timestamptz,
            payload           text
        ) on commit delete rows
        """
    )


def insert_records(
    cur: psycopg2.extensions.cursor,
    *,
    platform: str,
    shop_id: str,
    records: list[PolledRecord],
    fetched_at: datetime,
) -> int:
    """Insert record versions not stored yet; returns how many were new.

    The batch is streamed with COPY into a session-local staging table, then moved with one
    ``insert ... select ... on conflict do nothing``, in the caller's transaction: cheaper to
    send and to parse than a multi-row VALUES statement, with the same idempotence.
    """
    if not records:
        return 0
    text = "".join(
        f"{_copy_text(r.entity)}\t{_copy_text(r.record_id)}\t"
        f"{_copy_text(r.updated_at.isoformat() if r.updated_at is not None else None)}\t"
        f"{_copy_json(r.payload)}\n"
        for r in records
    )
    if cur.connection.autocommit:
        # The staging table empties at every commit: COPY must not commit on its own.
        raise ValueError("insert_records must run inside a transaction (autocommit is on)")
    _staging_table(cur)
    cur.execute("delete from polled_records_staging")  # a no-op unless called twice in one transaction
    cur.copy_expert(
        "copy polled_records_staging (entity, record_id, record_updated_at, payload) from stdin",
        io.StringIO(text),
    )
    cur.execute(
        """
        insert into raw.polled_records
            (platform, shop_id, entity, record_id, record_updated_at, fetched_at, payload)
        select %s, %s, entity, record_id, record_updated_at, %s, payload::jsonb
        from polled_records_staging
        on conflict (shop_id, entity, record_id, record_updated_at) do nothing
        """,
        (platform, shop_id, fetched_at),
    )
    return cur.rowcount


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
