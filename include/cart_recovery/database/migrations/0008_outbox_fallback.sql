-- A WhatsApp message Meta took and later reported undeliverable (a `failed` status callback with
-- 131026, not on WhatsApp, or 131047, outside the 24-hour window) goes again by email where the
-- person gave email consent. The webhook service queues that email as an outbox row of its own,
-- `fallback_of` the failed row, keyed `<plan_key>:email`; the stage's dispatcher claims it with
-- the same guards as any row (consent for email only, orders since, quiet hours...). One fallback
-- per failed message, however often Meta repeats the callback: unique on `fallback_of`.
alter table ops.recovery_outbox
    add column if not exists fallback_of bigint references ops.recovery_outbox (outbox_id) on delete cascade;
create unique index if not exists recovery_outbox_fallback_of_idx
    on ops.recovery_outbox (fallback_of) where fallback_of is not null;
