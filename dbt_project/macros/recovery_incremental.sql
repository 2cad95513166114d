{#
    The incremental watermark of the calling model: the latest value of `column` in {{ this }},
    minus var landing_lookback_minutes (rows committed out of order are not missed; processing a
    row twice is harmless). '-infinity' when the table is empty.

    The intermediate and mart models carry `source_landed_at`: the latest landing time (raw
    webhook received_at / poll fetched_at) of every input the row was computed from (for a cart:
    its own versions, the identity mappings and customer record it resolved through, its
    customer's orders, the customer's carts it depends on and the cart that supersedes it; see
    int_carts_segmented). It is a function of the data alone, so an incremental build and a full
    refresh write the same value, and each layer re-evaluates and writes only the rows whose
    inputs landed since its watermark.
#}
{% macro landed_watermark(column='source_landed_at') -%}
    {{ watermark_literal('max(' ~ column ~ ')') }}
{%- endmacro %}


{#
    `aggregate` over {{ this }} minus var landing_lookback_minutes, read when the model runs and
    written into the SQL as a literal ('-infinity' when the table is empty). A literal, not a
    subquery: the planner then estimates from the column's statistics and reads the few rows
    past the watermark through the index, where a subquery's unknown value makes it assume a
    third of the table and scan all of it.
#}
{% macro watermark_literal(aggregate) -%}
    {%- if execute -%}
        {%- set sql -%}
            select (
                coalesce({{ aggregate }}, '-infinity'::timestamptz)
                    - make_interval(mins => {{ var('landing_lookback_minutes') }})
            )::text
            from {{ this }}
        {%- endset -%}
        '{{ run_query(sql).columns[0].values()[0] }}'::timestamptz
    {%- else -%}
        '-infinity'::timestamptz
    {%- endif -%}
{%- endmacro %}


{#
    Carts that became abandoned because as_of moved on since the last build: abandoned_at after
    the latest abandoned_at already in `column` of {{ this }} (minus the landing lookback) and at
    or before as_of. Their inputs may be old, so the landed watermark alone would miss them.
#}
{% macro newly_abandoned(abandoned_at='abandoned_at', column='abandoned_at') -%}
    (
        {{ abandoned_at }} >= {{ watermark_literal('max(' ~ column ~ ')') }}
        and {{ abandoned_at }} <= {{ as_of() }}
    )
{%- endmacro %}


{#
    Pre-hook of a cart-keyed incremental model: deletes the rows of the carts int_carts_segmented
    re-evaluated since this model's watermark (`landed_column`: source_landed_at or
    plan_landed_at), so a cart that no longer qualifies leaves before the build writes the ones
    that do. `only_if` narrows the carts (SQL over `segmented`). `= any(array(...))` makes it one
    index lookup per key, where `in (subquery)` may hash every row of the table.
#}
{% macro delete_reevaluated_carts(landed_column, only_if=none) -%}
    {%- if is_incremental() -%}
    delete from {{ this }}
    where cart_key = any(array(
        select segmented.cart_key
        from {{ ref('int_carts_segmented') }} as segmented
        where segmented.{{ landed_column }} >= {{ landed_watermark() }}
            {%- if only_if %}
            and {{ only_if }}
            {%- endif %}
    ))
    {%- endif -%}
{%- endmacro %}
