{{
    config(
        materialized='incremental',
        unique_key='cart_key',
        incremental_strategy='delete+insert',
        indexes=[
            {'columns': ['cart_key'], 'unique': True},
            {'columns': ['customer_key']},
            {'columns': ['source_landed_at']},
            {'columns': ['shop_id', 'last_activity_at']},
            {'columns': ['shop_id', 'email']},
            {'columns': ['shop_id', 'phone']},
        ],
    )
}}

-- Carts with their customer, contacts, consent, shop settings and completion. One row per cart.
--
-- customer_key: the platform customer id (from the cart, else the account linked to the cart's
-- email, else to its phone), else the normalised email, else the E.164 phone, scoped to the shop.
-- Consent per channel combines the cart and the customer record: an opt-out in either wins, and
-- at least one of them must say yes.
-- Completion: the platform says so (Shopify completed_at, WooCommerce status recovered, Ideasoft
-- isOrdered), or the same customer placed an order at or after the cart was created, or an order
-- carries the cart's checkout token.
-- Incremental: carts landed since the watermark, carts whose email or phone was newly linked to
-- an account, and every cart of a customer with a new order or customer record.
with customer_records as (

    select * from {{ ref('int_customers_unioned') }}

),

-- what the shop is (the shops file, through ops.shops)
shops as (

    select * from {{ ref('stg_ops__shops') }}

),

{% if is_incremental() %}
changed_customers as (

    select customer_key from {{ ref('int_orders_resolved') }}
    where source_landed_at >= {{ landed_watermark() }}

    union

    select {{ customer_key('shop_id', 'customer_platform_id', 'email', 'phone') }}
    from customer_records
    where landed_at >= {{ landed_watermark() }}

),

-- the carts to re-resolve, by their staging key; one select per reason (an OR across them would
-- scan every cart instead of using the indexes)
changed_carts as (

    select platform, shop_id, source_cart_id from {{ ref('int_carts_unioned') }}
    where landed_at >= {{ landed_watermark() }}

    union

    select platform, shop_id, source_cart_id from {{ this }}
    where customer_key in (select customer_key from changed_customers)

    union

    -- stored carts whose own email or phone (the resolved one is the cart's own when it has
    -- one) now links to another account; new carts are in the first select
    {{ relinked_rows(this, ['platform', 'shop_id', 'source_cart_id']) }}

),
{% endif %}

carts as (

    {% if is_incremental() -%}
    -- through each platform's staging key index
    select unioned.*
    from changed_carts
    {{ keyed_lookup(ref('int_carts_unioned'), 'unioned', {
        'platform': 'changed_carts.platform',
        'shop_id': 'changed_carts.shop_id',
        'source_cart_id': 'changed_carts.source_cart_id',
    }) }}
    {%- else -%}
    select * from {{ ref('int_carts_unioned') }}
    {% endif %}

),

carts_with_customer_id as (

    select
        carts.*,
        {{ resolved_customer_id('carts') }} as resolved_customer_id,
        {{ links_landed_at() }} as links_landed_at
    from carts
    {{ identity_link_joins('carts') }}

),

carts_with_contacts as (

    select
        carts.cart_key,
        carts.shop_id,
        carts.platform,
        carts.source_cart_id,
        carts.checkout_token,
        carts.cart_token,
        carts.resolved_customer_id as customer_platform_id,
        coalesce(carts.email, customer_records.email) as email,
        coalesce(carts.phone, customer_records.phone) as phone,
        coalesce(carts.first_name, customer_records.first_name) as first_name,
        coalesce(carts.last_name, customer_records.last_name) as last_name,
        coalesce(carts.language, shops.language) as language,
        shops.timezone,
        coalesce(carts.currency, shops.currency) as currency,
        carts.cart_url,
        carts.line_items,
        carts.cart_value,
        shops.free_shipping_threshold,
        coalesce(carts.email_consent, true)
            and coalesce(customer_records.email_consent, true)
            and coalesce(carts.email_consent, customer_records.email_consent, false) as email_consent,
        coalesce(carts.message_consent, true)
            and coalesce(customer_records.message_consent, true)
            and coalesce(carts.message_consent, customer_records.message_consent, false) as message_consent,
        carts.resolved_customer_id is null as is_guest,
        carts.source_completed_at,
        carts.created_at,
        carts.updated_at,
        carts.last_activity_at,
        carts.ingest_path,
        greatest(carts.landed_at, carts.links_landed_at, customer_records.landed_at) as cart_landed_at
    from carts_with_customer_id as carts
    {% if is_incremental() -%}
    {{ keyed_lookup(ref('int_customers_unioned'), 'customer_records', {
        'shop_id': 'carts.shop_id',
        'customer_platform_id': 'carts.resolved_customer_id',
    }, outer=true) }}
    {%- else -%}
    left join customer_records
        on customer_records.shop_id = carts.shop_id
        and customer_records.customer_platform_id = carts.resolved_customer_id
    {%- endif %}
    -- every cart's shop is there (test every_cart_shop_is_in_the_shops_file on int_carts_unioned)
    left join shops
        on shops.shop_id = carts.shop_id

),

carts_keyed as (

    select
        coalesce(
            {{ customer_key('shop_id', 'customer_platform_id', 'email', 'phone') }},
            {{ hash_key(["'cart'", 'cart_key']) }}
        ) as customer_key,
        *
    from carts_with_contacts

),

customer_orders_landed as (

    select orders.customer_key, max(orders.source_landed_at) as orders_landed_at
    from {{ ref('int_orders_resolved') }} as orders
    where orders.is_placed
        and orders.customer_key in (select customer_key from carts_keyed)
    group by orders.customer_key

),

order_completions as (

    select cart_key, min(ordered_at) as completed_at
    from (
        select carts.cart_key, orders.ordered_at
        from carts_keyed as carts
        inner join {{ ref('int_orders_resolved') }} as orders
            on orders.customer_key = carts.customer_key
            and orders.ordered_at >= carts.created_at
            and orders.is_placed

        union all

        select carts.cart_key, orders.ordered_at
        from carts_keyed as carts
        inner join {{ ref('int_orders_resolved') }} as orders
            on orders.shop_id = carts.shop_id
            and orders.checkout_token in (carts.source_cart_id, carts.checkout_token, carts.cart_token)
            and orders.ordered_at >= carts.created_at
            and orders.is_placed

        union all

        -- A Shopify order names the checkout it came from by id, whichever path landed either.
        select carts.cart_key, orders.ordered_at
        from carts_keyed as carts
        inner join {{ ref('int_orders_resolved') }} as orders
            on orders.shop_id = carts.shop_id
            and orders.platform = carts.platform
            and orders.source_cart_id = carts.source_cart_id
            and orders.ordered_at >= carts.created_at
            and orders.is_placed
    ) as completing_orders
    group by cart_key

),

final as (

    select
        carts_keyed.*,
        least(carts_keyed.source_completed_at, order_completions.completed_at) as completed_at,
        greatest(carts_keyed.cart_landed_at, customer_orders_landed.orders_landed_at) as source_landed_at
    from carts_keyed
    left join order_completions
        on order_completions.cart_key = carts_keyed.cart_key
    left join customer_orders_landed
        on customer_orders_landed.customer_key = carts_keyed.customer_key

)

select * from final
