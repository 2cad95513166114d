{#
    Resolving a record (cart or order) to its customer through int_customer_identities: the
    record's own platform customer id, else the account its normalised email, else its E.164
    phone, is linked to. Shared by int_carts_resolved and int_orders_resolved so both resolve
    alike.
#}

{#
    The left joins that bring in `email_links` and `phone_links` for the records aliased `alias`;
    in an incremental build (few records), lookups through the identity index (keyed_lookup).
#}
{% macro identity_link_joins(alias) -%}
    {%- for kind in ['email', 'phone'] %}
    {%- if is_incremental() %}
    {{ keyed_lookup(
        ref('int_customer_identities'),
        kind ~ '_links',
        {'shop_id': alias ~ '.shop_id', 'identity_kind': "'" ~ kind ~ "'", 'identity_value': alias ~ '.' ~ kind},
        columns=kind ~ '_links.customer_platform_id, ' ~ kind ~ '_links.mapping_landed_at',
        outer=true,
    ) }}
    {%- else %}
    left join {{ ref('int_customer_identities') }} as {{ kind }}_links
        on {{ kind }}_links.shop_id = {{ alias }}.shop_id
        and {{ kind }}_links.identity_kind = '{{ kind }}'
        and {{ kind }}_links.identity_value = {{ alias }}.{{ kind }}
    {%- endif %}
    {%- endfor %}
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
    When the links of the records aliased `alias` last changed which account they point to
    (int_customer_identities.mapping_landed_at), given identity_link_joins.
#}
{% macro links_landed_at() -%}
    greatest(email_links.mapping_landed_at, phone_links.mapping_landed_at)
{%- endmacro %}

{#
    Incremental filter: records whose email or phone (`kinds`) was linked to another account
    since the calling model's watermark (their customer may have changed). One condition per
    kind: give a single kind per select where an index should serve it (an OR of the two
    semi-joins is evaluated row by row).
#}
{% macro linked_since_watermark(kinds=['email', 'phone']) -%}
    {%- for kind in kinds %}
    {% if not loop.first %}or {% endif %}(shop_id, {{ kind }}) in (
        select shop_id, identity_value from {{ ref('int_customer_identities') }}
        where identity_kind = '{{ kind }}' and mapping_landed_at >= {{ landed_watermark() }}
    )
    {%- endfor %}
{%- endmacro %}


{#
    The `columns` of the rows of `relation` (with shop_id, email and phone) whose email or phone
    was linked to another account since the calling model's watermark: a lookup per changed
    identity through an index on (shop_id, email) and (shop_id, phone) of `relation`.
#}
{% macro relinked_rows(relation, columns) -%}
    {%- for kind in ['email', 'phone'] %}
    {% if not loop.first %}union{% endif %}
    select {% for column in columns %}records.{{ column }}{% if not loop.last %}, {% endif %}{% endfor %}
    from {{ ref('int_customer_identities') }} as identities
    {{ keyed_lookup(relation, 'records', {'shop_id': 'identities.shop_id', kind: 'identities.identity_value'}) }}
    where identities.identity_kind = '{{ kind }}'
        and identities.mapping_landed_at >= {{ landed_watermark() }}
    {%- endfor %}
{%- endmacro %}


{#
    customers mart pre-hook. A guest is known by email (else phone) until that email or phone is
    linked to an account: then its carts and orders resolve to the account and the guest's row must go. Only guests
    (no platform id) can vanish so; the candidates are the guests with an email or phone whose
    identity mapping changed since the watermark, deleted when nothing resolves to them anymore.
#}
{% macro delete_merged_guests() %}
    {%- if is_incremental() %}
    delete from {{ this }} as guests
    where guests.customer_key in (
            select relinked.customer_key
            from ({{ relinked_rows(this, ['customer_key', 'customer_platform_id']) }}) as relinked
            where relinked.customer_platform_id is null
        )
        and not exists (
            select 1 from {{ ref('int_carts_segmented') }} as carts
            where carts.customer_key = guests.customer_key
        )
        and not exists (
            select 1 from {{ ref('int_orders_resolved') }} as orders
            where orders.customer_key = guests.customer_key
        )
    {%- endif %}
{% endmacro %}
