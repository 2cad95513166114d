{{
    config(
        materialized='incremental',
        unique_key='cart_key',
        incremental_strategy='delete+insert',
        indexes=[
            {'columns': ['cart_key'], 'unique': True},
            {'columns': ['customer_key']},
            {'columns': ['source_landed_at']},
            {'columns': ['plan_landed_at']},
            {'columns': ['abandoned_at']},
        ],
    )
}}

-- Carts with their abandonment, the customer's history before the cart, the segments and the
-- holdout assignment. One row per cart (abandoned or not: history needs every cart).
--
-- Every column is a function of the landed data, never of the build time or as_of (the marts
-- apply as_of), so a rebuild gives the same answer. Incremental: every cart of each customer
-- with a cart or order landed since the watermark is evaluated (history, completion, superseding
-- and the coupon cap all look across the customer's carts), and the carts whose inputs landed
-- since the watermark (source_landed_at) are written: a new cart, the cart it supersedes, the
-- carts after it, not the customer's older carts.
-- Segment rules (windows and factors from the segment_policy seed):
--   is_first_time        no placed order and no abandonment before the cart was created
--   is_repeat_abandoner  an abandonment of the same customer within repeat_abandoner.window_days
--                        before the cart was created
--   is_high_value        cart_value >= the shop's 90th percentile of cart values over the
--                        high_value.window_days before the cart's (UTC, ISO) week, with at least
--                        var high_value_min_sample carts; or >= var high_value_cart_value
--   is_pre_sale          the cart's last activity (shop-local date) is inside the window_days
--                        before a sale event of sale_calendar
--   is_gift_deadline     same, before a gift deadline
--   is_near_free_shipping  cart_value in [near_free_shipping_min_ratio * threshold, threshold)
--   is_guest             no platform customer account (matched by id, email or phone)
--   is_in_coupon_cooldown  a coupon-driven recovery of the customer within
--                        coupon_cooldown.window_days before the cart was created
{% if is_incremental() %}
with changed_customers as (

    select customer_key from {{ ref('int_carts_resolved') }}
    where source_landed_at >= {{ landed_watermark() }}
    union
    select customer_key from {{ ref('int_orders_resolved') }}
    where source_landed_at >= {{ landed_watermark() }}

),

carts as (
{% else %}
with carts as (
{% endif %}

    select * from {{ ref('int_carts_resolved') }}
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

stages as (

    select * from {{ ref('recovery_stages') }}

),

calendar as (

    select * from {{ ref('sale_calendar') }}

),

policy as (

    select
        max(case when segment = 'repeat_abandoner' then window_days end) as repeat_abandoner_days,
        max(case when segment = 'coupon_cooldown' then window_days end) as coupon_cooldown_days,
        min(case when segment = 'gift_deadline' then delay_multiplier end) as gift_deadline_multiplier
    from {{ ref('segment_policy') }}

),

first_stage as (

    select delay_minutes from stages order by stage limit 1

),

carts_local as (

    -- the shop-local date of the last activity, computed once per cart
    select carts.*, (carts.last_activity_at at time zone carts.timezone)::date as local_activity_date
    from carts

),

carts_in_calendar as (

    -- one pass over the (small) calendar per cart
    select
        carts.*,
        coalesce(windows.is_pre_sale, false) as is_pre_sale,
        coalesce(windows.is_gift_deadline, false) as is_gift_deadline,
        windows.next_sale_date::timestamp at time zone carts.timezone as next_sale_starts_at
    from carts_local as carts
    left join lateral (
        select
            bool_or(
                calendar.event_kind = 'sale'
                and carts.local_activity_date >= calendar.event_date - calendar.window_days
                and carts.local_activity_date < calendar.event_date
            ) as is_pre_sale,
            bool_or(
                calendar.event_kind = 'gift_deadline'
                and carts.local_activity_date >= calendar.event_date - calendar.window_days
                and carts.local_activity_date < calendar.event_date
            ) as is_gift_deadline,
            min(calendar.event_date) filter (
                where calendar.event_kind = 'sale' and calendar.event_date > carts.local_activity_date
            ) as next_sale_date
        from calendar
    ) as windows on true

),

carts_with_abandonment as (

    select
        carts_in_calendar.*,
        case
            when is_gift_deadline then least(1.0, coalesce(policy.gift_deadline_multiplier, 1.0))
            else 1.0
        end as delay_multiplier,
        last_activity_at
            + make_interval(mins => 1) * first_stage.delay_minutes
            * case
                when is_gift_deadline then least(1.0, coalesce(policy.gift_deadline_multiplier, 1.0))
                else 1.0
            end as abandoned_at
    from carts_in_calendar
    cross join policy
    cross join first_stage

),

carts_flagged as (

    select
        *,
        -- abandoned: idle past the (first stage) threshold without being completed by then
        (completed_at is null or completed_at > abandoned_at) as was_ever_abandoned
    from carts_with_abandonment

),

coupon_recoveries as (

    -- an order with a coupon placed within the attribution window after an abandonment of the
    -- same customer
    select distinct orders.order_key, orders.customer_key, orders.ordered_at
    from orders
    inner join carts_flagged
        on carts_flagged.customer_key = orders.customer_key
        and carts_flagged.was_ever_abandoned
        and {{ within_recovery_attribution('carts_flagged.abandoned_at', 'orders.ordered_at') }}
    where orders.has_coupon

),

order_history as (

    select
        carts.cart_key,
        count(orders.order_key) as prior_orders_count,
        coalesce(sum(orders.order_total), 0) as prior_revenue,
        count(orders.order_key) filter (where orders.has_coupon) as prior_coupons_used
    from carts_flagged as carts
    inner join orders
        on orders.customer_key = carts.customer_key
        and orders.ordered_at < carts.created_at
    group by carts.cart_key

),

recovery_history as (

    select
        carts.cart_key,
        count(*) as prior_coupon_recoveries_count,
        max(coupon_recoveries.ordered_at) as last_coupon_recovery_at
    from carts_flagged as carts
    inner join coupon_recoveries
        on coupon_recoveries.customer_key = carts.customer_key
        and coupon_recoveries.ordered_at < carts.created_at
    group by carts.cart_key

),

abandonment_history as (

    select
        carts.cart_key,
        count(*) as prior_abandonments_count,
        max(earlier.abandoned_at) as last_prior_abandoned_at
    from carts_flagged as carts
    inner join carts_flagged as earlier
        on earlier.customer_key = carts.customer_key
        and earlier.cart_key <> carts.cart_key
        and earlier.was_ever_abandoned
        and earlier.abandoned_at < carts.created_at
    group by carts.cart_key

),

neighbours as (

    -- superseded_at: the creation of the customer's next cart, in (created_at, cart_key) order
    select
        cart_key,
        lead(created_at) over customer_carts as superseded_at,
        lead(source_landed_at) over customer_carts as superseder_landed_at
    from carts_flagged
    window customer_carts as (partition by customer_key order by created_at, cart_key)

),

dependencies_landed as (

    -- the latest landing among the customer's carts that this cart's row depends on: those
    -- created before it (history) and those created up to the end of its plan window (its
    -- superseding, and the coupon offers of carts abandoned before it, which the coupon cap
    -- chain reads). Multipliers are at most 1, so the longest stage delay bounds every stage.
    select carts.cart_key, max(others.source_landed_at) as dependencies_landed_at
    from carts_flagged as carts
    cross join (select max(delay_minutes) as delay_minutes from stages) as longest_stage
    inner join carts_flagged as others
        on others.customer_key = carts.customer_key
        and others.created_at
            <= carts.last_activity_at + make_interval(mins => 2) * longest_stage.delay_minutes
    group by carts.cart_key

),

final as (

    select
        -- ids
        carts.cart_key,
        carts.customer_key,
        carts.shop_id,
        carts.platform,
        carts.source_cart_id,
        carts.checkout_token,
        carts.customer_platform_id,

        -- strings
        carts.email,
        carts.phone,
        carts.first_name,
        carts.last_name,
        carts.language,
        carts.timezone,
        carts.currency,
        carts.cart_url,
        carts.line_items,
        carts.ingest_path,

        -- numerics
        carts.cart_value,
        carts.free_shipping_threshold,
        carts.delay_multiplier,
        thresholds.p90_cart_value as shop_p90_cart_value,
        coalesce(order_history.prior_orders_count, 0) as prior_orders_count,
        coalesce(order_history.prior_revenue, 0) as prior_revenue,
        coalesce(order_history.prior_coupons_used, 0) as prior_coupons_used,
        coalesce(abandonment_history.prior_abandonments_count, 0) as prior_abandonments_count,
        coalesce(recovery_history.prior_coupon_recoveries_count, 0) as prior_coupon_recoveries_count,

        -- booleans
        carts.email_consent,
        carts.message_consent,
        carts.completed_at is not null as is_completed,
        carts.was_ever_abandoned,
        coalesce(order_history.prior_orders_count, 0) = 0
            and coalesce(abandonment_history.prior_abandonments_count, 0) = 0 as is_first_time,
        coalesce(
            abandonment_history.last_prior_abandoned_at
                >= carts.created_at - make_interval(days => coalesce(policy.repeat_abandoner_days, 90)),
            false
        ) as is_repeat_abandoner,
        coalesce(
            (thresholds.carts_count >= {{ var('high_value_min_sample') }}
                and carts.cart_value >= thresholds.p90_cart_value)
            {%- if var('high_value_cart_value', none) is not none %}
            or carts.cart_value >= {{ var('high_value_cart_value') }}
            {%- endif %},
            false
        ) as is_high_value,
        carts.is_pre_sale,
        carts.is_gift_deadline,
        coalesce(
            carts.cart_value < carts.free_shipping_threshold
                and carts.cart_value >= carts.free_shipping_threshold * {{ var('near_free_shipping_min_ratio') }},
            false
        ) as is_near_free_shipping,
        carts.is_guest,
        coalesce(
            recovery_history.last_coupon_recovery_at
                >= carts.created_at - make_interval(days => coalesce(policy.coupon_cooldown_days, 0)),
            false
        ) as is_in_coupon_cooldown,
        {{ is_holdout('carts.customer_key') }} as is_holdout,

        -- timestamps
        carts.created_at,
        carts.updated_at,
        carts.last_activity_at,
        carts.abandoned_at,
        carts.completed_at,
        neighbours.superseded_at,
        carts.next_sale_starts_at,
        -- every input the row was computed from: its own (int_carts_resolved, which includes
        -- the customer's orders), the carts it depends on, and the cart that supersedes it
        greatest(
            carts.source_landed_at,
            dependencies_landed.dependencies_landed_at,
            neighbours.superseder_landed_at
        ) as source_landed_at,
        -- the inputs the recovery plan depends on: the same without a superseding cart created
        -- after the plan window (it changes superseded_at, never a stage; one inside the window
        -- is among the dependencies)
        greatest(carts.source_landed_at, dependencies_landed.dependencies_landed_at) as plan_landed_at

    from carts_flagged as carts
    cross join policy
    left join order_history on order_history.cart_key = carts.cart_key
    left join recovery_history on recovery_history.cart_key = carts.cart_key
    left join abandonment_history on abandonment_history.cart_key = carts.cart_key
    left join neighbours on neighbours.cart_key = carts.cart_key
    left join dependencies_landed on dependencies_landed.cart_key = carts.cart_key
    left join {{ ref('int_shop_weekly_cart_values') }} as thresholds
        on thresholds.shop_id = carts.shop_id
        and thresholds.activity_week = date_trunc('week', carts.last_activity_at at time zone 'UTC')::date

)

select * from final
{% if is_incremental() %}
-- every cart of a changed customer was evaluated (history needs them); only the rows with an
-- input landed since the watermark can differ from the stored ones, so only they are written
where source_landed_at >= {{ landed_watermark() }}
{% endif %}
