{{
    config(
        materialized='incremental',
        unique_key='cart_key',
        incremental_strategy='delete+insert',
        indexes=[
            {'columns': ['cart_key', 'stage'], 'unique': True},
            {'columns': ['source_landed_at']},
        ],
        pre_hook="{{ delete_reevaluated_carts('plan_landed_at') }}",
    )
}}

-- The pre-hook (delete_reevaluated_carts) removes the rows of the re-evaluated carts first, so a
-- cart that is no longer abandoned leaves.
-- The recovery policy applied to every abandoned cart and stage. One row per cart that was ever
-- abandoned (as_of is applied by the marts) and stage (recovery_stages), with what the message would carry and why it is not sent, if not.
--
-- due_at = last activity + stage delay x delay_multiplier (gift deadlines shorten the sequence).
-- channel: whatsapp with a phone and message consent (not +1 numbers: Meta does not deliver
-- marketing templates to US numbers), else email with an email and email consent, else null.
-- suppressed_reason, the first that applies (null = send):
--   holdout                   the customer is in the holdout (never sent; the row records what
--                             would have been sent)
--   completed                 the cart was completed (checkout or order) by the stage's due time
--   superseded_by_newer_cart  the customer started a newer cart by the stage's due time
--   no_contact                neither email nor phone
--   no_consent                a contact but no consent for it
--   pre_sale_no_coupon        coupon stage inside a pre-sale window (segment_policy pre_sale)
--   first_time_no_coupon      coupon stage for a first-time customer, when the policy says suppress
--                             (the default sends it without the coupon instead)
--   coupon_cooldown           coupon stage right after a coupon-driven recovery
--   coupon_cap                coupon stage while an earlier cart of the customer got a coupon
--                             offer within coupon_cap.window_days (one coupon offer per window)
-- For the coupon reasons the row carries no coupon (coupon_pct 0, no free shipping, no expiry);
-- policy_coupon_pct keeps what the stage would have offered.
with recursive

{% if is_incremental() %}
changed_carts as (

    select cart_key, customer_key from {{ ref('int_carts_segmented') }}
    where plan_landed_at >= {{ landed_watermark() }}

),
{% endif %}

carts as (

    -- incremental: every abandoned cart of the customers with a re-evaluated cart, so that the
    -- coupon cap chain below walks each such customer's whole history; only the re-evaluated
    -- carts are written (final)
    {% if is_incremental() -%}
    select customer_carts.*
    from (select distinct customer_key from changed_carts) as changed_customers
    {{ keyed_lookup(ref('int_carts_segmented'), 'customer_carts',
        {'customer_key': 'changed_customers.customer_key'}, condition='customer_carts.was_ever_abandoned') }}
    {%- else -%}
    select * from {{ ref('int_carts_segmented') }}
    where was_ever_abandoned
    {%- endif %}

),

stages as (

    select * from {{ ref('recovery_stages') }}

),

policy_rows as (

    select * from {{ ref('segment_policy') }}

),

policy as (

    select
        {%- for segment in ['first_time', 'repeat_abandoner', 'high_value', 'pre_sale', 'gift_deadline',
                            'near_free_shipping', 'guest', 'coupon_cap', 'coupon_cooldown'] %}
        coalesce(max(case when segment = '{{ segment }}' then coupon_action end), 'allow')
            as {{ segment }}_action,
        coalesce(max(case when segment = '{{ segment }}' then extra_coupon_pct end), 0)
            as {{ segment }}_extra_pct,
        coalesce(bool_or(case when segment = '{{ segment }}' then free_shipping_on_coupon_stages end), false)
            as {{ segment }}_free_shipping,
        {%- endfor %}
        max(case when segment = 'coupon_cap' then window_days end) as coupon_cap_days
    from policy_rows

),

carts_with_actions as (

    -- the coupon action of the cart: a suppressing segment names the reason; otherwise
    -- send_without_coupon if any segment says so; otherwise allow with the added extras
    select
        carts.*,
        case
            when carts.is_pre_sale and policy.pre_sale_action = 'suppress' then 'pre_sale_no_coupon'
            when carts.is_first_time and policy.first_time_action = 'suppress' then 'first_time_no_coupon'
            when carts.is_in_coupon_cooldown and policy.coupon_cooldown_action = 'suppress' then 'coupon_cooldown'
        end as coupon_suppressed_reason,
        (carts.is_pre_sale and policy.pre_sale_action = 'send_without_coupon')
            or (carts.is_first_time and policy.first_time_action = 'send_without_coupon')
            or (carts.is_in_coupon_cooldown and policy.coupon_cooldown_action = 'send_without_coupon')
            or (carts.is_repeat_abandoner and policy.repeat_abandoner_action = 'send_without_coupon')
            or (carts.is_high_value and policy.high_value_action = 'send_without_coupon')
            or (carts.is_gift_deadline and policy.gift_deadline_action = 'send_without_coupon')
            or (carts.is_near_free_shipping and policy.near_free_shipping_action = 'send_without_coupon')
            or (carts.is_guest and policy.guest_action = 'send_without_coupon') as is_without_coupon,
        case when carts.is_repeat_abandoner then policy.repeat_abandoner_extra_pct else 0 end
            + case when carts.is_high_value then policy.high_value_extra_pct else 0 end
            + case when carts.is_gift_deadline then policy.gift_deadline_extra_pct else 0 end
            + case when carts.is_near_free_shipping then policy.near_free_shipping_extra_pct else 0 end
            + case when carts.is_guest then policy.guest_extra_pct else 0 end as extra_coupon_pct,
        (carts.is_repeat_abandoner and policy.repeat_abandoner_free_shipping)
            or (carts.is_high_value and policy.high_value_free_shipping)
            or (carts.is_gift_deadline and policy.gift_deadline_free_shipping)
            or (carts.is_near_free_shipping and policy.near_free_shipping_free_shipping)
            or (carts.is_guest and policy.guest_free_shipping) as is_extra_free_shipping
    from carts
    cross join policy

),

candidates as (

    select
        carts.cart_key,
        carts.customer_key,
        stages.stage,
        carts.last_activity_at
            + make_interval(mins => 1) * stages.delay_minutes * carts.delay_multiplier as due_at,
        case
            when carts.phone is not null and carts.message_consent and carts.phone not like '+1%'
                then 'whatsapp'
            when carts.email is not null and carts.email_consent
                then 'email'
        end as channel,
        case when carts.language = 'tr' then 'tr' else 'en' end as message_language,
        stages.coupon_pct as policy_coupon_pct,
        stages.coupon_pct > 0 or stages.free_shipping as is_coupon_stage,
        stages.coupon_pct + carts.extra_coupon_pct as offered_coupon_pct,
        stages.free_shipping or carts.is_extra_free_shipping as offered_free_shipping,
        stages.template_en,
        stages.template_tr,
        stages.template_no_coupon_en,
        stages.template_no_coupon_tr,
        carts.is_holdout,
        carts.completed_at,
        carts.superseded_at,
        carts.email,
        carts.phone,
        carts.is_without_coupon,
        carts.coupon_suppressed_reason,
        carts.next_sale_starts_at,
        carts.abandoned_at,
        carts.plan_landed_at as source_landed_at
    from carts_with_actions as carts
    cross join stages

),

candidates_with_reasons as (

    select
        *,
        case
            when is_holdout then 'holdout'
            when completed_at <= due_at then 'completed'
            when superseded_at <= due_at then 'superseded_by_newer_cart'
            when email is null and phone is null then 'no_contact'
            when channel is null then 'no_consent'
            when is_coupon_stage and not is_without_coupon then coupon_suppressed_reason
        end as reason_before_cap
    from candidates

),

cart_coupon_offers as (

    -- carts that would send a coupon, before the cap, in the customer's order of abandonment
    select
        carts.cart_key,
        carts.customer_key,
        carts.abandoned_at,
        coalesce(bool_or(
            candidates.is_coupon_stage
            and not candidates.is_without_coupon
            and candidates.reason_before_cap is null
        ), false) as has_coupon_offer,
        row_number() over (
            partition by carts.customer_key order by carts.abandoned_at, carts.cart_key
        ) as abandonment_number
    from carts
    inner join candidates_with_reasons as candidates
        on candidates.cart_key = carts.cart_key
    group by carts.cart_key, carts.customer_key, carts.abandoned_at

),

coupon_cap_chain as (

    -- walk each customer's abandoned carts in order: a cart's coupon offer is capped when the
    -- customer's last offer is less than coupon_cap_days old; only uncapped offers count
    select
        offers.cart_key,
        offers.customer_key,
        offers.abandonment_number,
        false as is_coupon_capped,
        case when offers.has_coupon_offer then offers.abandoned_at end as last_offer_at
    from cart_coupon_offers as offers
    where offers.abandonment_number = 1

    union all

    select
        offers.cart_key,
        offers.customer_key,
        offers.abandonment_number,
        offers.has_coupon_offer
            and chain.last_offer_at is not null
            and offers.abandoned_at < chain.last_offer_at
                + make_interval(days => coalesce(policy.coupon_cap_days, 0)) as is_coupon_capped,
        case
            when offers.has_coupon_offer
                and (
                    chain.last_offer_at is null
                    or offers.abandoned_at >= chain.last_offer_at
                        + make_interval(days => coalesce(policy.coupon_cap_days, 0))
                )
                then offers.abandoned_at
            else chain.last_offer_at
        end as last_offer_at
    from coupon_cap_chain as chain
    inner join cart_coupon_offers as offers
        on offers.customer_key = chain.customer_key
        and offers.abandonment_number = chain.abandonment_number + 1
    cross join policy

),

evaluated as (

    select
        candidates.*,
        case
            when candidates.reason_before_cap is not null then candidates.reason_before_cap
            when candidates.is_coupon_stage
                and not candidates.is_without_coupon
                and chain.is_coupon_capped
                and policy.coupon_cap_action = 'suppress' then 'coupon_cap'
        end as suppressed_reason,
        candidates.is_without_coupon
            or (chain.is_coupon_capped and policy.coupon_cap_action = 'send_without_coupon')
            as is_sent_without_coupon
    from candidates_with_reasons as candidates
    inner join coupon_cap_chain as chain
        on chain.cart_key = candidates.cart_key
    cross join policy

),

terms as (

    select
        cart_key,
        customer_key,
        stage,
        channel,
        message_language,
        suppressed_reason,
        policy_coupon_pct,
        due_at,
        next_sale_starts_at,
        template_en,
        template_tr,
        template_no_coupon_en,
        template_no_coupon_tr,
        -- the coupon rules leave the message without its coupon
        not is_coupon_stage
            or is_sent_without_coupon
            or coalesce(suppressed_reason in (
                'pre_sale_no_coupon', 'first_time_no_coupon', 'coupon_cooldown', 'coupon_cap'
            ), false) as is_without_coupon,
        offered_coupon_pct,
        offered_free_shipping,
        abandoned_at,
        source_landed_at
    from evaluated

),

final as (

    select
        -- ids
        cart_key,
        customer_key,
        stage,

        -- strings
        channel,
        case
            when is_without_coupon and message_language = 'tr' then template_no_coupon_tr
            when is_without_coupon then template_no_coupon_en
            when message_language = 'tr' then template_tr
            else template_en
        end as template,
        message_language as language,
        suppressed_reason,

        -- numerics
        case when is_without_coupon then 0 else offered_coupon_pct end as coupon_pct,
        policy_coupon_pct,

        -- booleans
        case when is_without_coupon then false else offered_free_shipping end as free_shipping,
        suppressed_reason is null as is_planned_to_send,

        -- timestamps
        due_at,
        case
            when is_without_coupon or (offered_coupon_pct <= 0 and not offered_free_shipping) then null
            when next_sale_starts_at > due_at
                then least(
                    due_at + make_interval(hours => {{ var('coupon_validity_hours') }}),
                    next_sale_starts_at
                )
            else due_at + make_interval(hours => {{ var('coupon_validity_hours') }})
        end as coupon_expires_at,
        abandoned_at,
        source_landed_at

    from terms

)

select * from final
{% if is_incremental() %}
where cart_key in (select cart_key from changed_carts)
{% endif %}
