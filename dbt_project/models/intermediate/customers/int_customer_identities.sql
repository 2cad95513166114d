{{
    config(
        materialized='incremental',
        unique_key=['shop_id', 'identity_kind', 'identity_value'],
        incremental_strategy='delete+insert',
        indexes=[
            {'columns': ['shop_id', 'identity_kind', 'identity_value'], 'unique': True},
            {'columns': ['landed_at']},
            {'columns': ['mapping_landed_at']},
        ],
    )
}}

-- Which platform customer an email or phone belongs to, per shop: the links seen on customer
-- records, carts and orders. One row per (shop, identity kind, identity value). When one email
-- or phone is linked to several accounts, the account seen first wins (then the lowest id), so
-- the mapping is stable as data arrives. Incremental: links landed since the watermark replace
-- a stored link only when they were seen earlier.
with customer_links as (

    select shop_id, customer_platform_id, email, phone, coalesce(created_at, updated_at) as seen_at, landed_at
    from {{ ref('int_customers_unioned') }}
    {% if is_incremental() %}
    where landed_at >= {{ landed_watermark('landed_at') }}
    {% endif %}

),

cart_links as (

    select shop_id, customer_platform_id, email, phone, created_at as seen_at, landed_at
    from {{ ref('int_carts_unioned') }}
    where customer_platform_id is not null
    {% if is_incremental() %}
        and landed_at >= {{ landed_watermark('landed_at') }}
    {% endif %}

),

order_links as (

    select shop_id, customer_platform_id, email, phone, ordered_at as seen_at, landed_at
    from {{ ref('int_orders_unioned') }}
    where customer_platform_id is not null
    {% if is_incremental() %}
        and landed_at >= {{ landed_watermark('landed_at') }}
    {% endif %}

),

links as (

    select * from customer_links
    union all
    select * from cart_links
    union all
    select * from order_links

),

identities as (

    select shop_id, 'email' as identity_kind, email as identity_value, customer_platform_id, seen_at, landed_at
    from links
    where email is not null

    union all

    select shop_id, 'phone' as identity_kind, phone as identity_value, customer_platform_id, seen_at, landed_at
    from links
    where phone is not null

),

ranked as (

    select
        *,
        row_number() over (
            partition by shop_id, identity_kind, identity_value
            order by seen_at nulls last, customer_platform_id
        ) as link_rank,
        max(landed_at) over (partition by shop_id, identity_kind, identity_value) as latest_landed_at,
        -- the first landing of this very link (the same account, first seen at the same time)
        min(landed_at) over (
            partition by shop_id, identity_kind, identity_value, seen_at, customer_platform_id
        ) as link_landed_at
    from identities

),

final as (

    -- the first-seen account wins, against the stored one too. landed_at is the latest landing
    -- of any link of the identity (this model's watermark); mapping_landed_at is the first
    -- landing of the winning link, so it moves only when the identity points to another
    -- account (the change signal downstream: a cart with a known email landing again does not
    -- re-resolve every cart with that email)
    select
        ranked.shop_id,
        ranked.identity_kind,
        ranked.identity_value,
        {%- if is_incremental() %}
        case
            when stored.identity_value is null
                or (ranked.seen_at, ranked.customer_platform_id) < (stored.first_seen_at, stored.customer_platform_id)
                then ranked.customer_platform_id
            else stored.customer_platform_id
        end as customer_platform_id,
        case
            when stored.identity_value is null
                or (ranked.seen_at, ranked.customer_platform_id) < (stored.first_seen_at, stored.customer_platform_id)
                then ranked.seen_at
            else stored.first_seen_at
        end as first_seen_at,
        greatest(ranked.latest_landed_at, stored.landed_at) as landed_at,
        case
            when stored.identity_value is null
                or (ranked.seen_at, ranked.customer_platform_id) < (stored.first_seen_at, stored.customer_platform_id)
                then ranked.link_landed_at
            else stored.mapping_landed_at
        end as mapping_landed_at
        {%- else %}
        ranked.customer_platform_id,
        ranked.seen_at as first_seen_at,
        ranked.latest_landed_at as landed_at,
        ranked.link_landed_at as mapping_landed_at
        {%- endif %}
    from ranked
    {% if is_incremental() %}
    left join {{ this }} as stored
        on stored.shop_id = ranked.shop_id
        and stored.identity_kind = ranked.identity_kind
        and stored.identity_value = ranked.identity_value
    {% endif %}
    where ranked.link_rank = 1

)

select * from final
