-- Every platform's customer records in one shape. One row per platform customer.
{%- set platforms = ['shopify', 'woocommerce', 'ticimax', 'ideasoft'] %}

with

unioned as (

    {% for platform in platforms %}
    select
        shop_id,
        '{{ platform }}' as platform,
        customer_platform_id,
        email,
        phone,
        first_name,
        last_name,
        email_consent,
        message_consent,
        created_at,
        updated_at,
        landed_at
    from {{ ref('stg_' ~ platform ~ '__customers') }}
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

final as (

    select * from unioned

)

select * from final
