-- The landing zone (raw) and the operational store (ops).
-- raw holds what the platforms sent, verbatim; dbt staging is the only reader.

create schema if not exists raw;
create schema if not exists ops;

-- One row per webhook delivery, stored before the 2xx answer. Retries reuse the delivery id,
-- so a repeated delivery is stored once.
create table if not exists raw.webhook_events (
    event_id        bigint generated always as identity primary key,
    platform        text        not null,
    shop_id         text        not null,      -- '' for channel webhooks (WhatsApp)
    topic           text        not null,      -- e.g. checkouts/update, order.updated, messages
    delivery_id     text        not null,
    received_at     timestamptz not null,
    payload         jsonb       not null,
    constraint webhook_events_platform_check
        check (platform in ('shopify', 'woocommerce', 'ticimax', 'ideasoft', 'whatsapp')),
    constraint webhook_events_delivery_unique unique (platform, shop_id, delivery_id)
);
create index if not exists webhook_events_shop_topic_idx
    on raw.webhook_events (shop_id, topic, received_at);

-- One row per version of a polled record: a record re-fetched unchanged (same updated time)
-- is stored once, so re-running an interval changes nothing.
create table if not exists raw.polled_records (
    platform            text        not null,
    shop_id             text        not null,
    entity              text        not null,  -- cart, order, customer, product
    record_id           text        not null,
    record_updated_at   timestamptz not null,
    fetched_at          timestamptz not null,
    payload             jsonb       not null,
    constraint polled_records_pk primary key (shop_id, entity, record_id, record_updated_at),
    constraint polled_records_platform_check
        check (platform in ('shopify', 'woocommerce', 'ticimax', 'ideasoft')),
    constraint polled_records_entity_check
        check (entity in ('cart', 'order', 'customer', 'product'))
);
create index if not exists polled_records_fetched_idx on raw.polled_records (fetched_at);

-- Incremental polling position per shop and entity.
create table if not exists ops.ingest_watermarks (
    shop_id         text        not null,
    entity          text        not null,
    watermark       timestamptz not null,
    updated_at      timestamptz not null,
    constraint ingest_watermarks_pk primary key (shop_id, entity)
);
