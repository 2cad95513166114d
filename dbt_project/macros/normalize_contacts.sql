{#
    Contact normalisation shared by every platform's staging models, so that a customer who
    types "Ayse@Example.com " on Shopify and "ayse@example.com" on Ideasoft matches.
#}

{% macro normalize_email(expression) -%}
    nullif(lower(trim({{ expression }})), '')
{%- endmacro %}


{#
    Phone numbers to E.164 ("+905321234567") where that is unambiguous, else null:
    - "+<country><number>" and "00<country><number>" (8 to 15 digits) are kept as international;
    - national numbers are read in the default country (var `default_phone_country_code`, 90 for
      Turkey, with var `national_number_length` digits after the trunk "0"): "0532 123 45 67" and
      "532 123 45 67" become "+905321234567", "90 532 123 45 67" too.
    Spaces, dashes, dots and brackets are ignored. Anything else (too short, letters) is null:
    a number we cannot dial is no contact.
#}
{% macro normalize_phone(expression) -%}
    {%- set country_code = var('default_phone_country_code', '90') | string -%}
    {%- set national_length = var('national_number_length', 10) | int -%}
    {%- set digits = "regexp_replace(coalesce(" ~ expression ~ ", ''), '[^0-9+]', '', 'g')" -%}
    case
        when {{ digits }} ~ '^\+[1-9][0-9]{7,14}$'
            then {{ digits }}
        when {{ digits }} ~ '^00[1-9][0-9]{7,13}$'
            then '+' || substr({{ digits }}, 3)
        when {{ digits }} ~ '^0[1-9][0-9]{ {{- national_length - 1 -}} }$'
            then '+{{ country_code }}' || substr({{ digits }}, 2)
        when {{ digits }} ~ '^{{ country_code }}[1-9][0-9]{ {{- national_length - 1 -}} }$'
            then '+' || {{ digits }}
        when {{ digits }} ~ '^[1-9][0-9]{ {{- national_length - 1 -}} }$'
            then '+{{ country_code }}' || {{ digits }}
    end
{%- endmacro %}
