{{
    config(
        unique_key=['shop_id', 'source_cart_id'],
        indexes=[
            {'columns': ['shop_id', 'source_cart_id'], 'unique': True},
            {'columns': ['landed_at']},
        ],
    )
}}

-- WooCommerce carts from the configured cart-capture endpoint (polled) and its cart.updated
-- webhook: the latest state of each cart. WooCommerce's *_gmt times are UTC without an offset.
with carts as (

    {{ latest_raw_records(
        platform='woocommerce',
        entity='cart',
        webhook_topics=['cart.updated', 'cart.created'],
        record_id="payload->>'id'",
        updated_at=parse_timestamp("payload->>'date_modified_gmt'", 'UTC'),
        id_column='source_cart_id',
        open_predicate="coalesce(payload->>'status', '') <> 'recovered'",
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as source_cart_id,
        nullif(payload->>'cart_key', '') as cart_token,
        nullif(nullif(payload->>'customer_id', ''), '0') as customer_platform_id,

        -- strings
        {{ normalize_email("coalesce(nullif(payload->>'email', ''), payload #>> '{billing,email}')") }} as email,
        {{ normalize_phone("coalesce(nullif(payload->>'phone', ''), payload #>> '{billing,phone}')", 'carts') }} as phone,
        nullif(trim(payload #>> '{billing,first_name}'), '') as first_name,
        nullif(trim(payload #>> '{billing,last_name}'), '') as last_name,
        null::text as language,
        upper(payload->>'currency') as currency,
        payload->>'cart_url' as cart_url,
        payload->>'status' as cart_status,
        (
            select coalesce(jsonb_agg(jsonb_build_object(
                'product_id', item->>'product_id',
                'variant_id', null,
                'title', item->>'name',
                'variant_title', null,
                'quantity', (item->>'quantity')::integer,
                'price', (item->>'price')::numeric
            ) order by position), '[]'::jsonb)
            from jsonb_array_elements({{ json_array("payload->'line_items'") }})
                with ordinality as items (item, position)
        ) as line_items,

        -- numerics
        (payload->>'total')::numeric(14, 2) as cart_value,

        -- booleans
        {{ json_bool("payload #>> '{consent,email}'") }} as email_consent,
        {{ json_bool("payload #>> '{consent,whatsapp}'") }} as message_consent,
        payload->>'status' = 'recovered' as is_ordered_at_source,

        -- timestamps
        {{ parse_timestamp("payload->>'date_created_gmt'", 'UTC') }} as created_at,
        record_updated_at as updated_at,
        last_open_updated_at,
        coalesce(last_open_updated_at, record_updated_at) as last_activity_at,

        -- lineage
        ingest_path,
        landed_at

    from carts

)

select * from final
