-- depends_on: {{ ref('int_carts_segmented') }}
{{
    config(
        materialized='incremental',
        unique_key='cart_key',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
        indexes=[
            {'columns': ['cart_key', 'stage'], 'unique': True},
            {'columns': ['due_at']},
            {'columns': ['stage', 'due_at']},
            {'columns': ['source_landed_at']},
            {'columns': ['abandoned_at']},
        ],
        pre_hook="{{ delete_reevaluated_carts('plan_landed_at', only_if='not exists (select 1 from ' ~ ref('abandoned_carts') ~ ' as carts where carts.cart_key = segmented.cart_key)') }}",
    )
}}

-- The pre-hook drops the plan rows of carts that left abandoned_carts (abandoned_carts has
-- already been built in this run). Only a cart re-evaluated since this table's watermark can
-- have left (as_of only moves forward, so a stored abandoned cart stays abandoned until its
-- inputs change), and int_carts_segmented rewrites such a cart with a plan_landed_at at or
-- after its own watermark, which is at or after ours: so the candidates are the carts of
-- int_carts_segmented landed since our watermark (an index scan), not every plan row.

-- One row per abandoned cart and stage: when it falls due, over which channel, with which
-- template and coupon, or why it is not sent (suppressed_reason; see int_recovery_plan_evaluated).
-- The dispatcher reads the rows that are due and not suppressed; its send-time guard re-checks
-- live data. Incremental: all stages of the carts whose plan was re-evaluated, and of the carts
-- that became abandoned, are replaced (delete+insert on cart_key); the pre-hook drops carts that
-- left abandoned_carts.
with

{% if is_incremental() %}
changed_carts as (

    -- carts whose plan changed, and carts that became abandoned because as_of moved on (a cart
    -- whose abandoned_carts row changed without its plan keeps the same rows here)
    select cart_key from {{ ref('int_recovery_plan_evaluated') }}
    where source_landed_at >= {{ landed_watermark() }}

    union

    select cart_key from {{ ref('abandoned_carts') }}
    where {{ newly_abandoned() }}

),
{% endif %}

abandoned_carts as (

    {% if is_incremental() -%}
    select carts.*
    from changed_carts
    {{ keyed_lookup(ref('abandoned_carts'), 'carts', {'cart_key': 'changed_carts.cart_key'},
        columns='carts.cart_key, carts.shop_id, carts.platform, carts.abandoned_at') }}
    {%- else -%}
    select cart_key, shop_id, platform, abandoned_at
    from {{ ref('abandoned_carts') }}
    {%- endif %}

),

plan as (

    {% if is_incremental() -%}
    select evaluated.*
    from abandoned_carts
    {{ keyed_lookup(ref('int_recovery_plan_evaluated'), 'evaluated', {'cart_key': 'abandoned_carts.cart_key'}) }}
    {%- else -%}
    select * from {{ ref('int_recovery_plan_evaluated') }}
    where cart_key in (select cart_key from abandoned_carts)
    {%- endif %}

),

final as (

    select
        -- ids
        {{ hash_key(['plan.cart_key', 'plan.stage']) }} as plan_key,
        plan.cart_key,
        plan.customer_key,
        abandoned_carts.shop_id,
        abandoned_carts.platform,
        plan.stage,

        -- strings
        plan.channel,
        plan.template,
        plan.language,
        plan.suppressed_reason,

        -- numerics
        plan.coupon_pct,
        plan.policy_coupon_pct,

        -- booleans
        plan.free_shipping,
        plan.is_planned_to_send,

        -- timestamps
        plan.due_at,
        plan.coupon_expires_at,
        abandoned_carts.abandoned_at,
        plan.source_landed_at

    from plan
    inner join abandoned_carts
        on abandoned_carts.cart_key = plan.cart_key

)

select * from final
