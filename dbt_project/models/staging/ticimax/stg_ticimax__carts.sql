{{
    config(
        unique_key=['shop_id', 'source_cart_id'],
        indexes=[
            {'columns': ['shop_id', 'source_cart_id'], 'unique': True},
            {'columns': ['landed_at']},
        ],
    )
}}

-- Ticimax carts (SiparisServis SelectSepet), polled only: Ticimax has no webhooks. Carts carry
-- the member id only; contacts and consent come from the member (stg_ticimax__customers).
-- Times without an offset are read as Europe/Istanbul (unverified).
with carts as (

    {{ latest_raw_records(
        platform='ticimax',
        entity='cart',
        webhook_topics=[],
        record_id="payload->>'SepetID'",
        updated_at=parse_timestamp("coalesce(payload->>'GuncellemeTarihi', payload->>'SepetTarihi')", 'Europe/Istanbul'),
        id_column='source_cart_id',
        open_predicate='true',
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as source_cart_id,
        null::text as cart_token,
        nullif(nullif(payload->>'UyeID', ''), '0') as customer_platform_id,

        -- strings
        null::text as email,
        null::text as phone,
        null::text as first_name,
        null::text as last_name,
        null::text as language,
        upper(payload->>'ParaBirimi') as currency,
        null::text as cart_url,
        (
            select coalesce(jsonb_agg(jsonb_build_object(
                'product_id', item->>'UrunID',
                'variant_id', null,
                'title', item->>'UrunAdi',
                'variant_title', null,
                'quantity', (item->>'Adet')::integer,
                'price', (item->>'Fiyat')::numeric
            ) order by position), '[]'::jsonb)
            from jsonb_array_elements({{ json_array("payload->'Urunler'") }})
                with ordinality as items (item, position)
        ) as line_items,

        -- numerics
        (payload->>'ToplamTutar')::numeric(14, 2) as cart_value,

        -- booleans
        null::boolean as email_consent,
        null::boolean as message_consent,

        -- timestamps
        {{ parse_timestamp("payload->>'SepetTarihi'", 'Europe/Istanbul') }} as created_at,
        record_updated_at as updated_at,
        last_open_updated_at,
        coalesce(last_open_updated_at, record_updated_at) as last_activity_at,

        -- lineage
        ingest_path,
        landed_at

    from carts

)

select * from final
