-- Incremental dbt staging reads what landed since its last build: index the landing times.
create index if not exists webhook_events_platform_topic_received_idx
    on raw.webhook_events (platform, topic, received_at);
create index if not exists polled_records_platform_entity_fetched_idx
    on raw.polled_records (platform, entity, fetched_at);
