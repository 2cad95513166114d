{#
    Contact normalisation shared by every platform's staging models, so that a customer who
    types "Ayse@Example.com " on Shopify and "ayse@example.com" on Ideasoft matches.
#}

{% macro normalize_email(expression) -%}
    nullif(lower(trim({{ expression }})), '')
{%- endmacro %}


{#
    The phone number `expression` (SQL over the payload, as the platform sent it) in E.164
    ("+905321234567"), or null when it is absent or no phone number: looked up in ops.phone_numbers,
    where ingest stored the normal form of every phone string of the payloads it landed, read with
    libphonenumber in the shop's country (cart_recovery.phones). "07700 900456" in a UK shop is
    "+447700900456", "0532 123 45 67" in a Turkish one "+905321234567"; "123" is null (no contact,
    never a guess). `relation`: the alias of the rows being read, whose shop_id scopes the lookup.
#}
{% macro normalize_phone(expression, relation) -%}
    (
        select phone_numbers.e164
        from {{ source('ops', 'phone_numbers') }} as phone_numbers
        where phone_numbers.shop_id = {{ relation }}.shop_id
            and phone_numbers.raw = ({{ expression }})
    )
{%- endmacro %}
