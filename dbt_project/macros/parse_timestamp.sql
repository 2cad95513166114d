{#
    A platform timestamp string as timestamptz.
    - ISO 8601 with an offset or "Z": taken as is.
    - ISO 8601 without an offset: read in `assumed_time_zone` (WooCommerce's *_gmt fields are UTC;
      Ticimax and Ideasoft send shop-local times, assumed Europe/Istanbul: unverified).
    - WCF JSON dates "/Date(1700000000000+0300)/": epoch milliseconds.
    Empty strings are null.
#}
{% macro parse_timestamp(expression, assumed_time_zone='UTC') -%}
    case
        when nullif(trim({{ expression }}), '') is null then null
        when {{ expression }} ~ '^/Date\(-?[0-9]+'
            then to_timestamp(substring({{ expression }} from '^/Date\((-?[0-9]+)')::bigint / 1000.0)
        when {{ expression }} ~ '[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?\s*(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)$'
            then ({{ expression }})::timestamptz
        else ({{ expression }})::timestamp at time zone '{{ assumed_time_zone }}'
    end
{%- endmacro %}
