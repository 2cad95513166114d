{{
    config(
        materialized='incremental',
        unique_key='order_key',
        incremental_strategy='delete+insert',
        indexes=[
            {'columns': ['order_key'], 'unique': True},
            {'columns': ['customer_key']},
            {'columns': ['source_landed_at']},
        ],
    )
}}

-- Orders with the customer key they belong to (platform customer id, else the account linked
-- to the order's email or phone, else the email, else the phone). One row per order.
-- Incremental: orders landed since the watermark, and orders whose email or phone was newly
-- linked to an account.
with orders as (

    select * from {{ ref('int_orders_unioned') }}
    {% if is_incremental() %}
    where landed_at >= {{ landed_watermark() }}
        or {{ linked_since_watermark() }}
    {% endif %}

),

resolved as (

    select
        orders.*,
        {{ resolved_customer_id('orders') }} as resolved_customer_id,
        greatest(orders.landed_at, {{ links_landed_at() }}) as source_landed_at
    from orders
    {{ identity_link_joins('orders') }}

),

final as (

    select
        -- ids
        order_key,
        coalesce(
            {{ customer_key('shop_id', 'resolved_customer_id', 'email', 'phone') }},
            {{ hash_key(["'order'", 'order_key']) }}
        ) as customer_key,
        shop_id,
        platform,
        source_order_id,
        resolved_customer_id as customer_platform_id,
        source_cart_id,
        checkout_token,

        -- strings
        email,
        phone,
        currency,
        coupon_codes,

        -- numerics
        order_total,

        -- booleans
        has_coupon,
        is_placed,

        -- timestamps
        ordered_at,
        updated_at,
        source_landed_at

    from resolved

)

select * from final
