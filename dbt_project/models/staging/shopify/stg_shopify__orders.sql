{{
    config(
        unique_key=['shop_id', 'source_order_id'],
        indexes=[
            {'columns': ['shop_id', 'source_order_id'], 'unique': True},
            {'columns': ['landed_at']},
            {'columns': ['shop_id', 'email']},
            {'columns': ['shop_id', 'phone']},
            {'columns': ['shop_id', 'customer_platform_id']},
        ],
    )
}}

-- Shopify orders (REST order shape), from orders/create|updated webhooks and polled orders.
with orders as (

    {{ latest_raw_records(
        platform='shopify',
        entity='order',
        webhook_topics=['orders/create', 'orders/updated', 'orders/paid'],
        record_id="payload->>'id'",
        updated_at="coalesce((payload->>'updated_at')::timestamptz, (payload->>'created_at')::timestamptz)",
        id_column='source_order_id',
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as source_order_id,
        nullif(payload #>> '{customer,id}', '') as customer_platform_id,
        nullif(payload->>'checkout_id', '') as source_cart_id,
        nullif(payload->>'checkout_token', '') as checkout_token,
        nullif(payload->>'cart_token', '') as cart_token,

        -- strings
        {{ normalize_email("coalesce(nullif(payload->>'email', ''), payload #>> '{customer,email}')") }} as email,
        {{ normalize_phone("coalesce(nullif(payload->>'phone', ''), payload #>> '{customer,phone}')", 'orders') }} as phone,
        upper(payload->>'currency') as currency,
        (
            select string_agg(code->>'code', ',' order by position)
            from jsonb_array_elements({{ json_array("payload->'discount_codes'") }})
                with ordinality as codes (code, position)
        ) as coupon_codes,

        -- numerics
        (payload->>'total_price')::numeric(14, 2) as order_total,

        -- booleans
        payload->>'cancelled_at' is null as is_placed,

        -- timestamps
        (payload->>'created_at')::timestamptz as ordered_at,
        record_updated_at as updated_at,

        -- lineage
        ingest_path,
        landed_at

    from orders

)

select * from final
