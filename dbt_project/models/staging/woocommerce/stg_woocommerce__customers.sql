{{
    config(
        unique_key=['shop_id', 'customer_platform_id'],
        indexes=[
            {'columns': ['shop_id', 'customer_platform_id'], 'unique': True},
            {'columns': ['landed_at']},
        ],
    )
}}

-- WooCommerce customers (REST v3), polled. Marketing consent is not part of core WooCommerce
-- customers (it arrives on the cart), so the consent columns are null here.
with customers as (

    {{ latest_raw_records(
        platform='woocommerce',
        entity='customer',
        webhook_topics=['customer.created', 'customer.updated'],
        record_id="payload->>'id'",
        updated_at=parse_timestamp("coalesce(payload->>'date_modified_gmt', payload->>'date_created_gmt')", 'UTC'),
        id_column='customer_platform_id',
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as customer_platform_id,

        -- strings
        {{ normalize_email("coalesce(nullif(payload->>'email', ''), payload #>> '{billing,email}')") }} as email,
        {{ normalize_phone("payload #>> '{billing,phone}'", 'customers') }} as phone,
        nullif(trim(payload->>'first_name'), '') as first_name,
        nullif(trim(payload->>'last_name'), '') as last_name,

        -- booleans
        null::boolean as email_consent,
        null::boolean as message_consent,

        -- timestamps
        {{ parse_timestamp("payload->>'date_created_gmt'", 'UTC') }} as created_at,
        record_updated_at as updated_at,

        -- lineage
        ingest_path,
        landed_at

    from customers

)

select * from final
