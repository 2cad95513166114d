-- Every platform's orders in one shape. One row per order.
{%- set platforms = ['shopify', 'woocommerce', 'ticimax', 'ideasoft'] %}

with

{% for platform in platforms %}
{{ platform }}_orders as (

    select
        shop_id,
        '{{ platform }}' as platform,
        source_order_id,
        customer_platform_id,
        source_cart_id,
        checkout_token,
        email,
        phone,
        currency,
        coupon_codes,
        order_total,
        is_placed,
        ordered_at,
        updated_at,
        landed_at
    from {{ ref('stg_' ~ platform ~ '__orders') }}

),

{% endfor %}

unioned as (

    {% for platform in platforms %}
    select * from {{ platform }}_orders
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

final as (

    select
        {{ hash_key(['shop_id', 'platform', 'source_order_id']) }} as order_key,
        shop_id,
        platform,
        source_order_id,
        customer_platform_id,
        source_cart_id,
        checkout_token,
        email,
        phone,
        currency,
        coupon_codes,
        order_total,
        coupon_codes is not null as has_coupon,
        is_placed,
        ordered_at,
        updated_at,
        landed_at
    from unioned

)

select * from final
