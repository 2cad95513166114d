{#
    Custom schemas are used as they are named (`marts`, `staging`, ...), not prefixed with the
    target schema: analysts and the report query `marts.abandoned_carts`, whatever the target.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
