{#
    md5 over the given SQL expressions, joined with "|" (so ("a|b", "c") and ("a", "b|c") stay apart
    only as far as ids never contain "|": platform ids do not). Null parts become "".
#}
{% macro hash_key(expressions) -%}
    md5(
        {%- for expression in expressions %}
        coalesce(cast({{ expression }} as text), ''){% if not loop.last %} || '|' ||{% endif %}
        {%- endfor %}
    )
{%- endmacro %}


{#
    The stable customer key, scoped to a shop: the platform's customer id when known, else the
    normalised email, else the E.164 phone. Callers resolve email and phone to a platform
    customer id first (int_customer_identities), so a guest and an account with the same email
    share one key.
#}
{% macro customer_key(shop_id, customer_platform_id, email, phone) -%}
    case
        when {{ customer_platform_id }} is not null
            then {{ hash_key([shop_id, "'id'", customer_platform_id]) }}
        when {{ email }} is not null
            then {{ hash_key([shop_id, "'email'", email]) }}
        when {{ phone }} is not null
            then {{ hash_key([shop_id, "'phone'", phone]) }}
    end
{%- endmacro %}


{#
    Holdout assignment: a pure function of the customer key, so it never changes once the key
    exists. The first 32 bits of md5('holdout|' || key), modulo 10000, below holdout_pct * 100.
#}
{% macro is_holdout(customer_key) -%}
    (('x' || left(md5('holdout|' || {{ customer_key }}), 8))::bit(32)::bigint % 10000)
        < ({{ var('holdout_pct') }} * 100)
{%- endmacro %}
