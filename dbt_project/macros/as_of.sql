{#
    The moment the build describes, as a timestamptz literal or expression. Logic never reads
    now(): the DAG passes the run's data interval end as `--vars '{as_of: "..."}'`, so a backfill
    replays what was true then. Without the var (a hand-run `dbt build`), it is the latest moment
    any raw row landed (webhook received or record fetched): "now, as far as the data knows".
    With empty raw tables this is null and nothing counts as abandoned.
#}
{% macro as_of() -%}
    {%- if var('as_of', none) -%}
        ('{{ var("as_of") }}'::timestamptz)
    {%- else -%}
        (
            select greatest(
                (select max(received_at) from {{ source('raw', 'webhook_events') }}),
                (select max(fetched_at) from {{ source('raw', 'polled_records') }})
            )
        )
    {%- endif -%}
{%- endmacro %}
