{{
    config(
        unique_key=['shop_id', 'customer_platform_id'],
        indexes=[
            {'columns': ['shop_id', 'customer_platform_id'], 'unique': True},
            {'columns': ['landed_at']},
        ],
    )
}}

-- Ticimax members (UyeServis SelectUyeler), polled, with their consent flags
-- (MailIzin: email, SmsIzin: message channels incl. WhatsApp).
with customers as (

    {{ latest_raw_records(
        platform='ticimax',
        entity='customer',
        webhook_topics=[],
        record_id="payload->>'UyeID'",
        updated_at=parse_timestamp("coalesce(payload->>'GuncellemeTarihi', payload->>'KayitTarihi')", 'Europe/Istanbul'),
        id_column='customer_platform_id',
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as customer_platform_id,

        -- strings
        {{ normalize_email("payload->>'Mail'") }} as email,
        {{ normalize_phone("payload->>'CepTelefonu'", 'customers') }} as phone,
        nullif(trim(payload->>'Isim'), '') as first_name,
        nullif(trim(payload->>'Soyisim'), '') as last_name,

        -- booleans
        {{ json_bool("payload->>'MailIzin'") }} as email_consent,
        {{ json_bool("payload->>'SmsIzin'") }} as message_consent,

        -- timestamps
        {{ parse_timestamp("payload->>'KayitTarihi'", 'Europe/Istanbul') }} as created_at,
        record_updated_at as updated_at,

        -- lineage
        ingest_path,
        landed_at

    from customers

)

select * from final
