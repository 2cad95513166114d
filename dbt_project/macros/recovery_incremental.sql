{#
    The incremental watermark of the calling model: the latest value of `column` in {{ this }},
    minus var landing_lookback_minutes (rows committed out of order are not missed; processing a
    row twice is harmless). '-infinity' when the table is empty.

    The intermediate and mart models carry `source_landed_at`: the latest landing time (raw
    webhook received_at / poll fetched_at) of every input the row was computed from (for a cart:
    its own versions, the identity links and customer record it resolved through and all of its
    customer's orders and carts). It is a function of the data alone, so an incremental build
    and a full refresh write the same value, and each layer re-evaluates exactly the rows whose
    inputs landed since its watermark.
#}
{% macro landed_watermark(column='source_landed_at') -%}
    (
        select coalesce(max({{ column }}), '-infinity'::timestamptz)
            - make_interval(mins => {{ var('landing_lookback_minutes') }})
        from {{ this }}
    )
{%- endmacro %}


{#
    Carts that became abandoned because as_of moved on since the last build: abandoned_at after
    the latest abandoned_at already in `column` of {{ this }} (minus the landing lookback) and at
    or before as_of. Their inputs may be old, so the landed watermark alone would miss them.
#}
{% macro newly_abandoned(abandoned_at='abandoned_at', column='abandoned_at') -%}
    (
        {{ abandoned_at }} >= (
            select coalesce(max({{ column }}), '-infinity'::timestamptz)
                - make_interval(mins => {{ var('landing_lookback_minutes') }})
            from {{ this }}
        )
        and {{ abandoned_at }} <= {{ as_of() }}
    )
{%- endmacro %}
