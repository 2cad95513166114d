{{
    config(
        unique_key=['shop_id', 'product_id'],
        indexes=[
            {'columns': ['shop_id', 'product_id'], 'unique': True},
            {'columns': ['landed_at']},
        ],
    )
}}

-- WooCommerce products (REST v3), polled.
with products as (

    {{ latest_raw_records(
        platform='woocommerce',
        entity='product',
        webhook_topics=['product.created', 'product.updated'],
        record_id="payload->>'id'",
        updated_at=parse_timestamp("payload->>'date_modified_gmt'", 'UTC'),
        id_column='product_id',
    ) }}

),

final as (

    select
        -- ids
        shop_id,
        record_id as product_id,

        -- strings
        payload->>'name' as product_title,
        {{ json_array("payload->'attributes'") }} as attributes,

        -- numerics
        nullif(payload->>'price', '')::numeric(14, 2) as price,
        (payload->>'stock_quantity')::integer as stock_quantity,

        -- timestamps
        record_updated_at as updated_at,

        -- lineage
        ingest_path,
        landed_at

    from products

)

select * from final
