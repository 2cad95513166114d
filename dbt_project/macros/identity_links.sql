{#
    Resolving a record (cart or order) to its customer through int_customer_identities: the
    record's own platform customer id, else the account its normalised email, else its E.164
    phone, is linked to. Shared by int_carts_resolved and int_orders_resolved so both resolve
    alike.
#}

{# The left joins that bring in `email_links` and `phone_links` for the records aliased `alias`. #}
{% macro identity_link_joins(alias) -%}
    left join {{ ref('int_customer_identities') }} as email_links
        on email_links.shop_id = {{ alias }}.shop_id
        and email_links.identity_kind = 'email'
        and email_links.identity_value = {{ alias }}.email
    left join {{ ref('int_customer_identities') }} as phone_links
        on phone_links.shop_id = {{ alias }}.shop_id
        and phone_links.identity_kind = 'phone'
        and phone_links.identity_value = {{ alias }}.phone
{%- endmacro %}

{# The resolved platform customer id, given identity_link_joins. #}
{% macro resolved_customer_id(alias) -%}
    coalesce(
        {{ alias }}.customer_platform_id,
        email_links.customer_platform_id,
        phone_links.customer_platform_id
    )
{%- endmacro %}

{#
    Incremental filter: records whose email or phone gained an identity link since the calling
    model's watermark (their customer may have changed).
#}
{% macro linked_since_watermark() -%}
    (shop_id, email) in (
        select shop_id, identity_value from {{ ref('int_customer_identities') }}
        where identity_kind = 'email' and landed_at >= {{ landed_watermark() }}
    )
    or (shop_id, phone) in (
        select shop_id, identity_value from {{ ref('int_customer_identities') }}
        where identity_kind = 'phone' and landed_at >= {{ landed_watermark() }}
    )
{%- endmacro %}
