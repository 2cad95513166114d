{#
    The moment the build describes, as a timestamptz literal or expression. Logic never reads
    now(). In order of precedence:

    1. var `as_of` (`dbt build --vars '{as_of: "2026-11-01T00:00:00Z"}'`): for a hand-run replay.
    2. Environment variable CART_RECOVERY_AS_OF: how the DAG passes the run's data interval end.
       It is read only while executing (inside `if execute`), never while parsing, so a new
       value per run keeps dbt's partial parsing (a changed var forces a full re-parse: about
       1.6 s on every build here).
    3. Neither: the latest moment any raw row landed (webhook received or record fetched), "now,
       as far as the data knows". With empty raw tables this is null and nothing counts as
       abandoned.
#}
{% macro as_of() -%}
    {%- set from_env = env_var('CART_RECOVERY_AS_OF', '') if execute else '' -%}
    {%- if var('as_of', none) -%}
        ({{ as_of_literal(var('as_of'), 'var as_of') }})
    {%- elif from_env -%}
        ({{ as_of_literal(from_env, 'CART_RECOVERY_AS_OF') }})
    {%- else -%}
        (
            select greatest(
                (select max(received_at) from {{ source('raw', 'webhook_events') }}),
                (select max(fetched_at) from {{ source('raw', 'polled_records') }})
            )
        )
    {%- endif -%}
{%- endmacro %}


{# A checked timestamptz literal: an ISO 8601 timestamp with its UTC offset. #}
{% macro as_of_literal(value, origin) -%}
    {%- set text = value | string | trim -%}
    {%- set parsed = none -%}
    {%- if execute -%}
        {%- set parsed = modules.re.match('^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$', text) -%}
        {%- if not parsed -%}
            {{ exceptions.raise_compiler_error(
                origin ~ " must be an ISO 8601 timestamp with a UTC offset, such as 2026-11-01T00:00:00Z; got '"
                ~ text ~ "'") }}
        {%- endif -%}
    {%- endif -%}
    '{{ text }}'::timestamptz
{%- endmacro %}
