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

-- Ticimax orders, polled. Times without an offset are read as Europe/Istanbul (unverified).
with orders as (

    {{ latest_raw_records(
        platform='ticimax',
        entity='order',
        webhook_topics=[],
        record_id="payload->>'SiparisID'",
        updated_at=parse_timestamp("coalesce(payload->>'GuncellemeTarihi', payload->>'SiparisTarihi')", 'Europe/Istanbul'),
        id_column='source_order_id',
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as source_order_id,
        nullif(nullif(payload->>'UyeID', ''), '0') as customer_platform_id,
        null::text as source_cart_id,
        null::text as checkout_token,
        null::text as cart_token,

        -- strings
        null::text as email,
        null::text as phone,
        upper(payload->>'ParaBirimi') as currency,
        nullif(trim(payload->>'KuponKodu'), '') as coupon_codes,

        -- numerics
        (payload->>'ToplamTutar')::numeric(14, 2) as order_total,

        -- booleans
        true as is_placed,

        -- timestamps
        {{ parse_timestamp("payload->>'SiparisTarihi'", 'Europe/Istanbul') }} as ordered_at,
        record_updated_at as updated_at,

        -- lineage
        ingest_path,
        landed_at

    from orders

)

select * from final
