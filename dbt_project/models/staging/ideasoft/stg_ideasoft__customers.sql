{{
    config(
        unique_key=['shop_id', 'customer_platform_id'],
        indexes=[
            {'columns': ['shop_id', 'customer_platform_id'], 'unique': True},
            {'columns': ['landed_at']},
        ],
    )
}}

-- Ideasoft members (admin-api/members), polled.
with customers as (

    {{ latest_raw_records(
        platform='ideasoft',
        entity='customer',
        webhook_topics=['member/created', 'member/updated'],
        record_id="payload->>'id'",
        updated_at=parse_timestamp("coalesce(payload->>'updatedAt', payload->>'createdAt')", 'Europe/Istanbul'),
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
        {{ normalize_phone("payload->>'phoneNumber'", 'customers') }} as phone,
        nullif(trim(payload->>'firstname'), '') as first_name,
        nullif(trim(payload->>'surname'), '') as last_name,

        -- booleans
        {{ json_bool("payload->>'allowedToCampaigns'") }} as email_consent,
        {{ json_bool("payload->>'allowedToCampaigns'") }} as message_consent,

        -- timestamps
        {{ parse_timestamp("payload->>'createdAt'", 'Europe/Istanbul') }} as created_at,
        record_updated_at as updated_at,

        -- lineage
        ingest_path,
        landed_at

    from customers

)

select * from final
