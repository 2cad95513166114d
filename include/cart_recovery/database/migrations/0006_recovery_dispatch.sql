-- Dispatch (issue 11): the outbox that makes every send exactly-once and traceable, consent
-- revocations that apply at once, open conversations (the reply guard), and the coupon pool of
-- platforms without a coupon API.

-- One row per plan row (cart x stage) that fell due. The dispatcher inserts it (queued), claims
-- it (sending) in a committed transaction before it calls the provider, and records the answer.
-- Only the claimer sends. A row left in 'sending' past its lease becomes 'unknown': never re-sent
-- automatically; the provider's status callbacks (matched on provider_message_id or on the
-- plan_key echoed as biz_opaque_callback_data) settle it.
create table if not exists ops.recovery_outbox (
    outbox_id           bigint generated always as identity primary key,
    plan_key            text        not null,
    cart_key            text        not null,
    customer_key        text,
    shop_id             text        not null,
    platform            text        not null,
    stage               integer     not null,
    channel             text,                       -- whatsapp | email; null when nothing can be sent
    template            text,
    language            text,
    status              text        not null default 'queued',
    reason              text,                       -- why it was suppressed, deferred or expired
    planned_due_at      timestamptz not null,       -- the plan's due time
    due_at              timestamptz not null,       -- when it may go: later when deferred
    attempts            integer     not null default 0,
    claimed_by          text,
    claimed_at          timestamptz,
    recipient           text,                       -- the phone (E.164) or email it was sent to
    cart_url            text,                       -- the recovery URL the click link redirects to
    coupon_code         text,
    coupon_pct          numeric(5, 2),
    coupon_free_shipping boolean,
    coupon_expires_at   timestamptz,
    provider_message_id text,
    planned_by          jsonb,                      -- the plan row: rule, template, coupon terms
    guards              jsonb,                      -- each send-time guard and its verdict
    rendered_text       text,
    provider_response   jsonb,
    error_code          text,
    error               text,
    sent_at             timestamptz,
    delivered_at        timestamptz,
    read_at             timestamptz,
    failed_at           timestamptz,
    clicked_at          timestamptz,
    replied_at          timestamptz,
    created_at          timestamptz not null,
    updated_at          timestamptz not null,
    constraint recovery_outbox_plan_unique unique (plan_key),
    constraint recovery_outbox_provider_id_unique unique (provider_message_id),
    constraint recovery_outbox_stage_check check (stage between 1 and 3),
    constraint recovery_outbox_channel_check check (channel in ('whatsapp', 'email')),
    constraint recovery_outbox_status_check check (status in (
        'queued', 'sending', 'sent', 'delivered', 'read', 'failed',
        'suppressed', 'holdout', 'expired', 'unknown'
    ))
);
create index if not exists recovery_outbox_queued_idx
    on ops.recovery_outbox (stage, due_at) where status = 'queued';
create index if not exists recovery_outbox_sending_idx
    on ops.recovery_outbox (claimed_at) where status = 'sending';
-- the frequency cap: what was (or may have been) sent to a person
create index if not exists recovery_outbox_contacted_customer_idx on ops.recovery_outbox (customer_key)
    where status in ('sending', 'sent', 'delivered', 'read', 'unknown');
create index if not exists recovery_outbox_contacted_recipient_idx on ops.recovery_outbox (recipient)
    where status in ('sending', 'sent', 'delivered', 'read', 'unknown');
create index if not exists recovery_outbox_cart_idx on ops.recovery_outbox (cart_key);

-- Consent taken back, applied at send time whatever the last dbt build says: a WhatsApp STOP
-- (or Meta's 131050 "stop promotions"), an email unsubscribe, an operator. address is the E.164
-- phone for whatsapp, the lower-cased email for email; shop_id null means every shop.
create table if not exists ops.consent_revocations (
    revocation_id   bigint generated always as identity primary key,
    channel         text        not null,
    address         text        not null,
    shop_id         text,
    source          text        not null,
    revoked_at      timestamptz not null,
    detail          jsonb,
    constraint consent_revocations_channel_check check (channel in ('whatsapp', 'email'))
);
create index if not exists consent_revocations_address_idx
    on ops.consent_revocations (channel, address, revoked_at);

-- The newest inbound message per contact: the reply guard pauses an episode while the
-- conversation is open. Upserted by the webhook service with each inbound WhatsApp message.
create table if not exists ops.conversations (
    channel             text        not null,
    address             text        not null,   -- E.164 phone
    last_inbound_at     timestamptz not null,
    last_message_id     text        not null,
    constraint conversations_pk primary key (channel, address)
);

-- Coupon codes that an operator loads for a platform whose coupon API is not used (Ideasoft,
-- Ticimax): each code is claimed by one plan row, once.
create table if not exists ops.coupon_pool (
    shop_id         text        not null,
    code            text        not null,
    pct             numeric(5, 2) not null,
    free_shipping   boolean     not null default false,
    expires_at      timestamptz not null,
    loaded_at       timestamptz not null,
    plan_key        text,
    claimed_at      timestamptz,
    constraint coupon_pool_pk primary key (shop_id, code),
    constraint coupon_pool_plan_unique unique (plan_key)
);
create index if not exists coupon_pool_free_idx
    on ops.coupon_pool (shop_id, pct, free_shipping, expires_at) where plan_key is null;
