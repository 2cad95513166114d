-- The shops file in the warehouse, and phone numbers in one normal form (issue 9).

-- The shops file's shops, as the dbt models read them (source ops.shops). Written only by
-- cart_recovery.shops.sync_shops_table, which cart_transform runs before every build: the file
-- is the one definition, this table its copy.
create table if not exists ops.shops (
    shop_id         text primary key,
    platform        text not null,
    country         text not null check (country ~ '^[A-Z]{2}$'),  -- ISO 3166-1 alpha-2
    timezone        text not null,                                   -- IANA
    currency        text not null check (currency ~ '^[A-Z]{3}$'),   -- ISO 4217
    language        text not null,
    display_name    text not null,
    -- order value from which shipping is free (policy.shipping.free_over), in the shop's currency
    free_shipping_threshold numeric(14, 2)
);

-- Every shop added to, changed in or removed from the file, as the sync saw it. A change after
-- the last build makes the next one a full refresh (cart_recovery.plan.decide_build).
create table if not exists ops.shop_changes (
    change_id       bigint generated always as identity primary key,
    shop_id         text        not null,
    change          text        not null check (change in ('added', 'changed', 'removed')),
    definition      jsonb,      -- the shop's row in ops.shops after the change; null when removed
    changed_at      timestamptz not null default now()
);
create index if not exists shop_changes_changed_at on ops.shop_changes (changed_at);

-- The E.164 form of each phone string found in a shop's payloads, read in the shop's country with
-- libphonenumber (cart_recovery.phones): the models cannot run Python, so they look numbers up
-- here. `raw` is the text as the models read it (payload->>'phone'); `e164` is null for a string
-- that is no phone number (no contact, never a guess). Written by ingest in the transaction
-- that lands the payload; personal data, so privacy erasure covers it.
create table if not exists ops.phone_numbers (
    shop_id         text not null,
    raw             text not null,
    country         text not null,      -- the country it was read in (the shop's)
    e164            text check (e164 ~ '^\+[1-9][0-9]{4,14}$'),
    primary key (shop_id, raw)
);
create index if not exists phone_numbers_e164 on ops.phone_numbers (shop_id, e164);

-- True when the document is about the customer: one of their emails (any case), phone numbers
-- (`phones`: the exact strings that are the customer's number, found through ops.phone_numbers,
-- in a field named in phone_keys) or customer ids (customer_id, or id inside a customer/member
-- object) appears in it. Replaces the version that matched the last ten digits of any phone.
drop function if exists ops.jsonb_mentions_customer(jsonb, text[], text[], text[], text[]);
create function ops.jsonb_mentions_customer(
    doc jsonb, emails text[], phones text[], customer_ids text[], phone_keys text[]
)
returns boolean
language sql immutable parallel safe as $$
    select exists (
        select 1
        from ops.jsonb_leaves(doc) leaf
        where lower(leaf.value) = any (emails)
           or (leaf.value = any (phones) and lower(leaf.key) = any (phone_keys))
           or (leaf.value = any (customer_ids)
               and (lower(leaf.key) = 'customer_id'
                    or (leaf.key = 'id' and lower(leaf.parent) in ('customer', 'member'))))
    )
$$;
