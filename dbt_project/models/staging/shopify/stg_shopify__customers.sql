{{
    config(
        unique_key=['shop_id', 'customer_platform_id'],
        indexes=[
            {'columns': ['shop_id', 'customer_platform_id'], 'unique': True},
            {'columns': ['landed_at']},
        ],
    )
}}

-- Shopify customers (REST customer shape), polled.
with customers as (

    {{ latest_raw_records(
        platform='shopify',
        entity='customer',
        webhook_topics=['customers/create', 'customers/update'],
        record_id="payload->>'id'",
        updated_at="(payload->>'updated_at')::timestamptz",
        id_column='customer_platform_id',
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as customer_platform_id,

        -- strings
        {{ normalize_email("payload->>'email'") }} as email,
        {{ normalize_phone("payload->>'phone'", 'customers') }} as phone,
        nullif(trim(payload->>'first_name'), '') as first_name,
        nullif(trim(payload->>'last_name'), '') as last_name,

        -- booleans
        (payload #>> '{email_marketing_consent,state}') = 'subscribed' as email_consent,
        (payload #>> '{sms_marketing_consent,state}') = 'subscribed' as message_consent,

        -- timestamps
        (payload->>'created_at')::timestamptz as created_at,
        record_updated_at as updated_at,

        -- lineage
        ingest_path,
        landed_at

    from customers

)

select * from final
