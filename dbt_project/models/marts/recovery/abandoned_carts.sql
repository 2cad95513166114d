{{
    config(
        materialized='incremental',
        unique_key='cart_key',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        indexes=[
            {'columns': ['cart_key'], 'unique': True},
            {'columns': ['customer_key']},
            {'columns': ['source_landed_at']},
            {'columns': ['abandoned_at']},
        ],
        pre_hook="{{ delete_reevaluated_carts('source_landed_at') }}",
    )
}}

-- One row per abandoned cart as of var as_of, across platforms. Carts completed after they were
-- abandoned stay (they are the recoveries); a cart whose activity resumed leaves until it is
-- abandoned again. Incremental: the carts int_carts_segmented re-evaluated since the last build
-- and the carts that became abandoned because as_of moved on; the pre-hook
-- (delete_reevaluated_carts) first removes the re-evaluated carts, so one that is no longer
-- abandoned leaves. A full refresh gives the same table.
with carts as (

    select * from {{ ref('int_carts_segmented') }}
    where was_ever_abandoned
        and abandoned_at <= {{ as_of() }}
    {% if is_incremental() %}
        and (source_landed_at >= {{ landed_watermark() }} or {{ newly_abandoned() }})
    {% endif %}

),

final as (

    select
        -- ids
        cart_key,
        source_cart_id,
        checkout_token,
        shop_id,
        platform,
        customer_key,
        customer_platform_id,

        -- strings
        email,
        phone,
        first_name,
        last_name,
        language,
        timezone,
        currency,
        cart_url,
        line_items,

        -- numerics
        cart_value,
        free_shipping_threshold,
        shop_p90_cart_value,
        delay_multiplier,
        prior_orders_count,
        prior_revenue,
        prior_abandonments_count,
        prior_coupons_used,
        prior_coupon_recoveries_count,

        -- booleans
        email_consent,
        message_consent,
        true as is_abandoned,
        is_completed,
        is_first_time,
        is_repeat_abandoner,
        is_high_value,
        is_pre_sale,
        is_gift_deadline,
        is_near_free_shipping,
        is_guest,
        is_in_coupon_cooldown,
        is_holdout,

        -- timestamps
        created_at,
        last_activity_at,
        abandoned_at,
        completed_at,
        superseded_at,
        source_landed_at

    from carts

)

select * from final
