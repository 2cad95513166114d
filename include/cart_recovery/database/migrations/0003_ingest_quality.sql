-- Polling quality: rows that failed validation (never silently dropped) and per-run counts.

-- One row per polled record version that failed a great-expectations check. The record is kept
-- verbatim with every reason; a re-run that fetches the same bad version stores it once.
-- Personal data lives in payload: privacy erasure (customers/redact) must cover this table.
create table if not exists ops.quarantine (
    quarantine_id       bigint generated always as identity primary key,
    platform            text        not null,
    shop_id             text        not null,
    entity              text        not null,
    record_id           text,                   -- null when the record had no usable id
    record_updated_at   timestamptz,            -- null when its update time was missing or invalid
    reasons             text[]      not null,   -- e.g. {currency_iso_4217,total_non_negative}
    payload             jsonb       not null,
    payload_md5         text generated always as (md5(payload::text)) stored,
    interval_end        timestamptz not null,   -- the polling run that found it
    quarantined_at      timestamptz not null,
    constraint quarantine_record_unique unique (shop_id, entity, payload_md5)
);
create index if not exists quarantine_shop_entity_idx on ops.quarantine (shop_id, entity, interval_end);

-- One row per shop, entity and polling interval: what the run fetched, loaded and quarantined.
-- A re-run of the same interval updates its row (attempts + 1) instead of adding one.
create table if not exists ops.validation_runs (
    shop_id             text        not null,
    entity              text        not null,
    interval_end        timestamptz not null,
    platform            text        not null,
    window_start        timestamptz,            -- the watermark the run started from
    fetched             integer     not null,
    loaded              integer     not null,   -- new rows in raw.polled_records
    unchanged           integer     not null,   -- versions already stored (overlap, re-runs)
    quarantined         integer     not null,
    failures            jsonb       not null,   -- {"expectation": failing row count}
    watermark           timestamptz,            -- the watermark after the run
    attempts            integer     not null default 1,
    finished_at         timestamptz not null,
    constraint validation_runs_pk primary key (shop_id, entity, interval_end)
);
