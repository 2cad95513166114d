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

-- WooCommerce orders (REST v3), from order.created|updated webhooks and polled orders.
with orders as (

    {{ latest_raw_records(
        platform='woocommerce',
        entity='order',
        webhook_topics=['order.created', 'order.updated'],
        record_id="payload->>'id'",
        updated_at=parse_timestamp("coalesce(payload->>'date_modified_gmt', payload->>'date_created_gmt')", 'UTC'),
        id_column='source_order_id',
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as source_order_id,
        nullif(nullif(payload->>'customer_id', ''), '0') as customer_platform_id,
        null::text as source_cart_id,
        nullif(payload->>'order_key', '') as checkout_token,
        null::text as cart_token,

        -- strings
        {{ normalize_email("payload #>> '{billing,email}'") }} as email,
        {{ normalize_phone("payload #>> '{billing,phone}'", 'orders') }} as phone,
        upper(payload->>'currency') as currency,
        payload->>'status' as order_status,
        (
            select string_agg(line->>'code', ',' order by position)
            from jsonb_array_elements({{ json_array("payload->'coupon_lines'") }})
                with ordinality as lines (line, position)
        ) as coupon_codes,

        -- numerics
        (payload->>'total')::numeric(14, 2) as order_total,

        -- booleans
        -- pending/failed orders are unpaid attempts, not purchases; cancelled and refunded ones are undone.
        coalesce(payload->>'status', '') not in (
            'pending', 'failed', 'cancelled', 'refunded', 'checkout-draft', 'trash'
        ) as is_placed,

        -- timestamps
        {{ parse_timestamp("payload->>'date_created_gmt'", 'UTC') }} as ordered_at,
        record_updated_at as updated_at,

        -- lineage
        ingest_path,
        landed_at

    from orders

)

select * from final
