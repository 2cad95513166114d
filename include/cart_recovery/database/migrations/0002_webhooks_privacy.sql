-- Shopify's privacy webhooks (customers/redact, customers/data_request, shop/redact):
-- the requests with their status, the data exports, and the jsonb helpers that find and erase a
-- customer's personal data inside stored payloads.

-- One row per privacy request, written in the same transaction as its raw.webhook_events row and
-- processed after the 2xx answer. status: pending -> completed | failed (failed is retried on the
-- platform's next delivery of the same request and when the service starts).
create table if not exists ops.privacy_requests (
    request_id      bigint generated always as identity primary key,
    platform        text        not null,
    shop_id         text        not null,
    topic           text        not null,
    delivery_id     text        not null,
    customer_id     text,                       -- the platform's customer id; null for shop/redact
    payload         jsonb       not null,       -- the request as received; redacted once erased
    status          text        not null default 'pending',
    attempts        integer     not null default 0,
    received_at     timestamptz not null,
    processed_at    timestamptz,
    result          jsonb,                      -- counts of rows redacted, exported or deleted
    error           text,
    constraint privacy_requests_status_check check (status in ('pending', 'completed', 'failed')),
    constraint privacy_requests_topic_check
        check (topic in ('customers/redact', 'customers/data_request', 'shop/redact')),
    constraint privacy_requests_delivery_unique unique (platform, shop_id, delivery_id)
);
create index if not exists privacy_requests_open_idx on ops.privacy_requests (status)
    where status <> 'completed';

-- One row per customers/data_request: a JSON document of everything held about the customer.
-- It holds personal data by design; customers/redact and shop/redact delete it.
create table if not exists ops.data_exports (
    export_id       bigint generated always as identity primary key,
    request_id      bigint      not null references ops.privacy_requests (request_id),
    shop_id         text        not null,
    customer_id     text,
    created_at      timestamptz not null,
    export          jsonb       not null,
    constraint data_exports_request_unique unique (request_id)
);
create index if not exists data_exports_customer_idx on ops.data_exports (shop_id, customer_id);

-- Every scalar in a document with its key and its parent's key (array elements take the key of
-- their array), e.g. {"customer": {"id": 7}} yields (key 'id', parent 'customer', value '7').
create or replace function ops.jsonb_leaves(doc jsonb)
returns table (key text, parent text, value text)
language sql immutable parallel safe as $$
    with recursive walk (key, parent, node) as (
        select null::text, null::text, doc
        union all
        select child.key, child.parent, child.node
        from walk
        cross join lateral (
            select e.key, walk.key as parent, e.value as node
            from jsonb_each(case when jsonb_typeof(walk.node) = 'object' then walk.node else '{}' end) e
            union all
            select walk.key, walk.parent, a.value
            from jsonb_array_elements(case when jsonb_typeof(walk.node) = 'array' then walk.node else '[]' end) a
        ) child
    )
    select key, parent, node #>> '{}'
    from walk
    where jsonb_typeof(node) in ('string', 'number', 'boolean')
$$;

-- The document with the value of every key in personal_keys (lower case) replaced by null, at any
-- depth. Everything else (ids, totals, currency, timestamps, line items) is kept as it was.
create or replace function ops.jsonb_redact(doc jsonb, personal_keys text[])
returns jsonb
language plpgsql immutable parallel safe as $$
begin
    if jsonb_typeof(doc) = 'object' then
        return coalesce(
            (select jsonb_object_agg(
                        e.key,
                        case when lower(e.key) = any (personal_keys) then 'null'::jsonb
                             else ops.jsonb_redact(e.value, personal_keys) end)
             from jsonb_each(doc) e),
            '{}'::jsonb);
    elsif jsonb_typeof(doc) = 'array' then
        return coalesce(
            (select jsonb_agg(ops.jsonb_redact(a.value, personal_keys) order by a.position)
             from jsonb_array_elements(doc) with ordinality as a (value, position)),
            '[]'::jsonb);
    end if;
    return doc;
end
$$;

-- True when the document is about the customer: one of their emails (any case), phone numbers
-- (the last 10 digits of a phone-like field, so +90 555 123 45 67 matches 05551234567) or
-- customer ids (customer_id, or id inside a customer/member object) appears in it.
create or replace function ops.jsonb_mentions_customer(
    doc jsonb, emails text[], phone_tails text[], customer_ids text[], phone_keys text[]
)
returns boolean
language sql immutable parallel safe as $$
    select exists (
        select 1
        from ops.jsonb_leaves(doc) leaf
        where lower(leaf.value) = any (emails)
           or (lower(leaf.key) = any (phone_keys)
               and length(regexp_replace(leaf.value, '\D', '', 'g')) >= 7
               and right(regexp_replace(leaf.value, '\D', '', 'g'), 10) = any (phone_tails))
           or (leaf.value = any (customer_ids)
               and (lower(leaf.key) = 'customer_id'
                    or (leaf.key = 'id' and lower(leaf.parent) in ('customer', 'member'))))
    )
$$;
