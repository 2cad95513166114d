-- depends_on: {{ ref('int_customer_identities') }}
{{
    config(
        materialized='incremental',
        unique_key='customer_key',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        indexes=[
            {'columns': ['customer_key'], 'unique': True},
            {'columns': ['source_landed_at']},
            {'columns': ['last_abandoned_at']},
            {'columns': ['shop_id', 'email']},
            {'columns': ['shop_id', 'phone']},
        ],
        pre_hook="{{ delete_merged_guests() }}",
    )
}}

-- One row per customer (customer_key: per shop, matched by platform customer id, else email,
-- else phone), with orders, revenue (LTV so far), abandonments, coupons and the holdout flag.
-- Incremental: the customers with a cart, order or customer record landed since the last build,
-- and those with a cart that became abandoned because as_of moved on; the pre-hook
-- (delete_merged_guests) removes a guest whose email or phone now belongs to an account.
with all_customer_records as (

    select
        {{ customer_key('shop_id', 'customer_platform_id', 'email', 'phone') }} as customer_key,
        *
    from {{ ref('int_customers_unioned') }}

),

{% if is_incremental() %}
-- one select per condition (an OR across them would scan every cart instead of the indexes)
changed_customers as (

    select customer_key from {{ ref('int_carts_segmented') }}
    where source_landed_at >= {{ landed_watermark() }}

    union

    select customer_key from {{ ref('int_carts_segmented') }}
    where was_ever_abandoned and {{ newly_abandoned(column='last_abandoned_at') }}

    union

    select customer_key from {{ ref('int_orders_resolved') }}
    where source_landed_at >= {{ landed_watermark() }}

    union

    select customer_key from all_customer_records
    where landed_at >= {{ landed_watermark() }}

),
{% endif %}

carts as (

    select *, was_ever_abandoned and abandoned_at <= {{ as_of() }} as is_abandoned
    from {{ ref('int_carts_segmented') }}
    {% if is_incremental() %}
    where customer_key in (select customer_key from changed_customers)
    {% endif %}

),

orders as (

    select * from {{ ref('int_orders_resolved') }}
    where is_placed
    {% if is_incremental() %}
        and customer_key in (select customer_key from changed_customers)
    {% endif %}

),

customer_records as (

    select * from all_customer_records
    {% if is_incremental() %}
    where customer_key in (select customer_key from changed_customers)
    {% endif %}

),

customers_landed as (

    select customer_key, max(source_landed_at) as source_landed_at
    from (
        select customer_key, landed_at as source_landed_at from customer_records
        union all
        select customer_key, source_landed_at from carts
        union all
        select customer_key, source_landed_at from {{ ref('int_orders_resolved') }}
        {% if is_incremental() %}
        where customer_key in (select customer_key from changed_customers)
        {% endif %}
    ) as inputs
    group by customer_key

),

appearances as (

    -- every place a customer shows up, newest first per customer, for contacts
    select customer_key, shop_id, platform, customer_platform_id, email, phone, first_name,
        coalesce(updated_at, created_at) as seen_at, 1 as source_rank
    from customer_records

    union all

    select customer_key, shop_id, platform, customer_platform_id, email, phone, first_name,
        last_activity_at as seen_at, 2 as source_rank
    from carts

    union all

    select customer_key, shop_id, platform, customer_platform_id, email, phone, null as first_name,
        ordered_at as seen_at, 3 as source_rank
    from orders

),

latest_appearances as (

    select
        customer_key,
        shop_id,
        platform,
        min(seen_at) as first_seen_at,
        (array_agg(customer_platform_id order by source_rank, seen_at desc nulls last)
            filter (where customer_platform_id is not null))[1] as customer_platform_id,
        (array_agg(email order by source_rank, seen_at desc nulls last)
            filter (where email is not null))[1] as email,
        (array_agg(phone order by source_rank, seen_at desc nulls last)
            filter (where phone is not null))[1] as phone,
        (array_agg(first_name order by source_rank, seen_at desc nulls last)
            filter (where first_name is not null))[1] as first_name
    from appearances
    group by customer_key, shop_id, platform

),

coupon_recoveries as (

    select distinct orders.order_key, orders.customer_key
    from orders
    inner join carts
        on carts.customer_key = orders.customer_key
        and carts.is_abandoned
        and {{ within_recovery_attribution('carts.abandoned_at', 'orders.ordered_at') }}
    where orders.has_coupon

),

order_totals as (

    select
        customer_key,
        count(*) as orders_count,
        sum(order_total) as revenue,
        count(*) filter (where has_coupon) as coupons_used,
        min(ordered_at) as first_order_at,
        max(ordered_at) as last_order_at
    from orders
    group by customer_key

),

cart_totals as (

    select
        customer_key,
        count(*) filter (where is_abandoned) as abandoned_count,
        count(*) filter (where is_abandoned and is_completed) as abandoned_then_completed_count,
        max(abandoned_at) filter (where is_abandoned) as last_abandoned_at
    from carts
    group by customer_key

),

recovery_totals as (

    select customer_key, count(*) as coupon_recoveries_count
    from coupon_recoveries
    group by customer_key

),

final as (

    select
        -- ids
        customers.customer_key,
        customers.shop_id,
        customers.platform,
        customers.customer_platform_id,

        -- strings
        customers.email,
        customers.phone,
        customers.first_name,

        -- numerics
        coalesce(order_totals.orders_count, 0) as orders_count,
        coalesce(order_totals.revenue, 0) as revenue,
        coalesce(cart_totals.abandoned_count, 0) as abandoned_count,
        coalesce(cart_totals.abandoned_then_completed_count, 0) as abandoned_then_completed_count,
        coalesce(order_totals.coupons_used, 0) as coupons_used,
        coalesce(recovery_totals.coupon_recoveries_count, 0) as coupon_recoveries_count,

        -- booleans
        customers.customer_platform_id is null as is_guest,
        {{ is_holdout('customers.customer_key') }} as is_holdout,

        -- timestamps
        customers.first_seen_at,
        order_totals.first_order_at,
        order_totals.last_order_at,
        cart_totals.last_abandoned_at,
        customers_landed.source_landed_at

    from latest_appearances as customers
    left join order_totals on order_totals.customer_key = customers.customer_key
    left join cart_totals on cart_totals.customer_key = customers.customer_key
    left join recovery_totals on recovery_totals.customer_key = customers.customer_key
    left join customers_landed on customers_landed.customer_key = customers.customer_key

)

select * from final
