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

-- Ideasoft orders (admin-api/orders), from webhooks and polling.
with orders as (

    {{ latest_raw_records(
        platform='ideasoft',
        entity='order',
        webhook_topics=['order/created', 'order/updated'],
        record_id="payload->>'id'",
        updated_at=parse_timestamp("coalesce(payload->>'updatedAt', payload->>'createdAt')", 'Europe/Istanbul'),
        id_column='source_order_id',
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as source_order_id,
        nullif(nullif(payload #>> '{member,id}', ''), '0') as customer_platform_id,
        null::text as source_cart_id,
        null::text as checkout_token,
        null::text as cart_token,

        -- strings
        {{ normalize_email("payload #>> '{member,email}'") }} as email,
        {{ normalize_phone("payload #>> '{member,phoneNumber}'", 'orders') }} as phone,
        upper(payload->>'currency') as currency,
        nullif(trim(payload->>'couponCode'), '') as coupon_codes,

        -- numerics
        (payload->>'amount')::numeric(14, 2) as order_total,

        -- booleans
        true as is_placed,

        -- timestamps
        {{ parse_timestamp("payload->>'createdAt'", 'Europe/Istanbul') }} as ordered_at,
        record_updated_at as updated_at,

        -- lineage
        ingest_path,
        landed_at

    from orders

)

select * from final
