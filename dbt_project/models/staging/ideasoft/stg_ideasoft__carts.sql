{{
    config(
        unique_key=['shop_id', 'source_cart_id'],
        indexes=[
            {'columns': ['shop_id', 'source_cart_id'], 'unique': True},
            {'columns': ['landed_at']},
        ],
    )
}}

-- Ideasoft abandoned carts (admin-api/abandoned_carts, polled) and the abandoned_cart/updated
-- webhook: the latest state of each cart. allowedToCampaigns is one flag for every channel.
with carts as (

    {{ latest_raw_records(
        platform='ideasoft',
        entity='cart',
        webhook_topics=['abandoned_cart/updated', 'abandoned_cart/created'],
        record_id="payload->>'id'",
        updated_at=parse_timestamp("coalesce(payload->>'updatedAt', payload->>'createdAt')", 'Europe/Istanbul'),
        id_column='source_cart_id',
        open_predicate="lower(coalesce(payload->>'isOrdered', 'false')) not in ('true', '1')",
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as source_cart_id,
        null::text as cart_token,
        nullif(nullif(payload #>> '{member,id}', ''), '0') as customer_platform_id,

        -- strings
        {{ normalize_email("payload #>> '{member,email}'") }} as email,
        {{ normalize_phone("payload #>> '{member,phoneNumber}'", 'carts') }} as phone,
        nullif(trim(payload #>> '{member,firstname}'), '') as first_name,
        nullif(trim(payload #>> '{member,surname}'), '') as last_name,
        null::text as language,
        upper(payload->>'currency') as currency,
        null::text as cart_url,
        (
            select coalesce(jsonb_agg(jsonb_build_object(
                'product_id', item #>> '{product,id}',
                'variant_id', null,
                'title', item #>> '{product,name}',
                'variant_title', null,
                'quantity', (item->>'quantity')::integer,
                'price', (item->>'price')::numeric
            ) order by position), '[]'::jsonb)
            from jsonb_array_elements({{ json_array("payload->'items'") }})
                with ordinality as items (item, position)
        ) as line_items,

        -- numerics
        (payload->>'amount')::numeric(14, 2) as cart_value,

        -- booleans
        {{ json_bool("payload #>> '{member,allowedToCampaigns}'") }} as email_consent,
        {{ json_bool("payload #>> '{member,allowedToCampaigns}'") }} as message_consent,
        coalesce({{ json_bool("payload->>'isOrdered'") }}, false) as is_ordered_at_source,

        -- timestamps
        {{ parse_timestamp("payload->>'createdAt'", 'Europe/Istanbul') }} as created_at,
        record_updated_at as updated_at,
        last_open_updated_at,
        coalesce(last_open_updated_at, record_updated_at) as last_activity_at,

        -- lineage
        ingest_path,
        landed_at

    from carts

)

select * from final
