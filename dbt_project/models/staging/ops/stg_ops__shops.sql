{{ config(materialized='view') }}

-- The shops of the shops file, as cart_transform copied them into ops.shops before this build.
-- A view: the table is a handful of rows, rewritten only when the file changes.
with shops as (

    select * from {{ source('ops', 'shops') }}

),

final as (

    select
        -- ids
        shop_id,

        -- strings
        platform,
        country,
        timezone,
        currency,
        language,
        display_name,

        -- numerics
        free_shipping_threshold

    from shops

)

select * from final
