{{
    config(
        unique_key=['shop_id', 'product_id'],
        indexes=[
            {'columns': ['shop_id', 'product_id'], 'unique': True},
            {'columns': ['landed_at']},
        ],
    )
}}

-- Shopify products, polled: one row per product (variants kept as JSON).
with products as (

    {{ latest_raw_records(
        platform='shopify',
        entity='product',
        webhook_topics=['products/create', 'products/update'],
        record_id="payload->>'id'",
        updated_at="(payload->>'updated_at')::timestamptz",
        id_column='product_id',
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as product_id,

        -- strings
        payload->>'title' as product_title,
        nullif(payload->>'product_type', '') as product_type,
        {{ json_array("payload->'variants'") }} as variants,
        case when jsonb_typeof(payload->'size_chart') = 'object' then payload->'size_chart' end as size_chart,

        -- numerics
        (
            select min((variant->>'price')::numeric)
            from jsonb_array_elements({{ json_array("payload->'variants'") }}) as variants (variant)
        ) as min_price,
        (
            select sum((variant->>'inventory_quantity')::integer)
            from jsonb_array_elements({{ json_array("payload->'variants'") }}) as variants (variant)
        ) as inventory_quantity,

        -- booleans
        coalesce(jsonb_typeof(payload->'size_chart') = 'object', false) as has_size_chart,

        -- timestamps
        record_updated_at as updated_at,

        -- lineage
        ingest_path,
        landed_at

    from products

)

select * from final
