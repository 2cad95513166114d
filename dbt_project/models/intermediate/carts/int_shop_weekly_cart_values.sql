{{
    config(
        materialized='incremental',
        unique_key=['shop_id', 'activity_week'],
        incremental_strategy='delete+insert',
        indexes=[
            {'columns': ['shop_id', 'activity_week'], 'unique': True},
            {'columns': ['week_landed_at']},
        ],
    )
}}

-- The high_value threshold per shop and week: the 90th percentile of cart values over the
-- segment_policy high_value.window_days (90) before the week (ISO weeks, UTC), and how many
-- carts that is. One row per shop and week that has carts. int_carts_segmented joins it, so the
-- percentile is computed once per week, not per evaluated cart.
--
-- Incremental: the weeks of carts landed since the watermark, and the stored weeks whose window
-- a landed cart may have entered or left (weeks after its creation, up to window_days after
-- its last activity). A week whose window no landed cart touches keeps its stored percentile;
-- only week_landed_at (the latest landing among the week's own carts: the watermark) moves.
with policy as (

    select coalesce(max(case when segment = 'high_value' then window_days end), 90) as window_days
    from {{ ref('segment_policy') }}

),

{% if is_incremental() %}
landed as (

    select shop_id, created_at, last_activity_at
    from {{ ref('int_carts_resolved') }}
    where source_landed_at >= {{ landed_watermark('week_landed_at') }}

),

windows_touched as (

    select stored.shop_id, stored.activity_week
    from {{ this }} as stored
    cross join policy
    where exists (
        select 1 from landed
        where landed.shop_id = stored.shop_id
            and stored.activity_week::timestamp at time zone 'UTC'
                > least(landed.created_at, landed.last_activity_at)
            and (stored.activity_week - policy.window_days)::timestamp at time zone 'UTC'
                <= landed.last_activity_at
    )

),

weeks as (

    select distinct shop_id, date_trunc('week', last_activity_at at time zone 'UTC')::date as activity_week
    from landed
    where last_activity_at is not null

    union

    select shop_id, activity_week from windows_touched

),
{% else %}
weeks as (

    select distinct shop_id, date_trunc('week', last_activity_at at time zone 'UTC')::date as activity_week
    from {{ ref('int_carts_resolved') }}
    where last_activity_at is not null

),
{% endif %}

week_landings as (

    select
        weeks.shop_id,
        weeks.activity_week,
        (
            select max(own.source_landed_at)
            from {{ ref('int_carts_resolved') }} as own
            where own.shop_id = weeks.shop_id
                and own.last_activity_at >= weeks.activity_week::timestamp at time zone 'UTC'
                and own.last_activity_at < (weeks.activity_week + 7)::timestamp at time zone 'UTC'
        ) as week_landed_at
    from weeks

),

{% if is_incremental() %}
reused as (

    -- a stored week whose window no landed cart touched keeps its values
    select weeks.shop_id, weeks.activity_week, stored.p90_cart_value, stored.carts_count
    from week_landings as weeks
    inner join {{ this }} as stored
        on stored.shop_id = weeks.shop_id
        and stored.activity_week = weeks.activity_week
    where (weeks.shop_id, weeks.activity_week) not in (select shop_id, activity_week from windows_touched)

),
{% endif %}

computed as (

    select weeks.shop_id, weeks.activity_week, window_values.p90_cart_value, window_values.carts_count
    from week_landings as weeks
    cross join policy
    cross join lateral (
        select
            percentile_cont(0.9) within group (order by earlier.cart_value) as p90_cart_value,
            count(*) as carts_count
        from {{ ref('int_carts_resolved') }} as earlier
        where earlier.shop_id = weeks.shop_id
            and earlier.cart_value is not null
            and earlier.last_activity_at
                >= (weeks.activity_week - policy.window_days)::timestamp at time zone 'UTC'
            and earlier.last_activity_at < weeks.activity_week::timestamp at time zone 'UTC'
    ) as window_values
    {%- if is_incremental() %}
    where not exists (
        select 1 from reused
        where reused.shop_id = weeks.shop_id and reused.activity_week = weeks.activity_week
    )
    {%- endif %}

),

final as (

    select
        values_.shop_id,
        values_.activity_week,
        values_.p90_cart_value,
        values_.carts_count,
        weeks.week_landed_at
    from (
        select * from computed
        {%- if is_incremental() %}
        union all
        select * from reused
        {%- endif %}
    ) as values_
    inner join week_landings as weeks
        on weeks.shop_id = values_.shop_id
        and weeks.activity_week = values_.activity_week

)

select * from final
