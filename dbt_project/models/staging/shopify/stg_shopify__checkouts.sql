{{
    config(
        unique_key=['shop_id', 'checkout_id'],
        indexes=[
            {'columns': ['shop_id', 'checkout_id'], 'unique': True},
            {'columns': ['shop_id', 'source_cart_id']},
            {'columns': ['landed_at']},
        ],
    )
}}

-- The (shop_id, source_cart_id) index serves int_carts_resolved, which looks carts up by the
-- key they have downstream.
-- Shopify checkouts (REST checkout shape), from checkouts/create|update webhooks and polled
-- abandoned checkouts: the latest state of each checkout.
with checkouts as (

    {{ latest_raw_records(
        platform='shopify',
        entity='cart',
        webhook_topics=['checkouts/create', 'checkouts/update'],
        record_id="payload->>'id'",
        updated_at="(payload->>'updated_at')::timestamptz",
        id_column='checkout_id',
        open_predicate="payload->>'completed_at' is null",
        carry=("nullif(payload->>'token', '')", 'checkout_token'),
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as checkout_id,
        -- The checkout id keys the cart: every version has it. The token only comes with
        -- webhooks (a polled checkout has none): kept from the latest version that had one.
        record_id as source_cart_id,
        carried as checkout_token,
        nullif(payload->>'cart_token', '') as cart_token,
        nullif(payload #>> '{customer,id}', '') as customer_platform_id,

        -- strings
        {{ normalize_email("coalesce(nullif(payload->>'email', ''), payload #>> '{customer,email}')") }} as email,
        {{ normalize_phone("coalesce(nullif(payload->>'phone', ''), payload #>> '{customer,phone}')", 'checkouts') }} as phone,
        nullif(trim(payload #>> '{customer,first_name}'), '') as first_name,
        nullif(trim(payload #>> '{customer,last_name}'), '') as last_name,
        nullif(lower(left(payload->>'customer_locale', 2)), '') as language,
        upper(payload->>'currency') as currency,
        payload->>'abandoned_checkout_url' as cart_url,
        (
            select coalesce(jsonb_agg(jsonb_build_object(
                'product_id', item->>'product_id',
                'variant_id', item->>'variant_id',
                'title', item->>'title',
                'variant_title', item->>'variant_title',
                'quantity', (item->>'quantity')::integer,
                'price', (item->>'price')::numeric
            ) order by position), '[]'::jsonb)
            from jsonb_array_elements({{ json_array("payload->'line_items'") }})
                with ordinality as items (item, position)
        ) as line_items,

        -- numerics
        (payload->>'total_price')::numeric(14, 2) as cart_value,

        -- booleans
        (payload #>> '{customer,email_marketing_consent,state}') = 'subscribed' as email_consent,
        (payload #>> '{customer,sms_marketing_consent,state}') = 'subscribed' as message_consent,

        -- timestamps
        (payload->>'created_at')::timestamptz as created_at,
        record_updated_at as updated_at,
        last_open_updated_at,
        coalesce(last_open_updated_at, record_updated_at) as last_activity_at,
        (payload->>'completed_at')::timestamptz as completed_at,

        -- lineage
        ingest_path,
        landed_at

    from checkouts

)

select * from final
