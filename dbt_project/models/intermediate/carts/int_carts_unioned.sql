-- Every platform's carts in one shape, with the stable cart key. One row per cart.
{%- set platforms = [
    ('shopify', 'stg_shopify__checkouts'),
    ('woocommerce', 'stg_woocommerce__carts'),
    ('ticimax', 'stg_ticimax__carts'),
    ('ideasoft', 'stg_ideasoft__carts'),
] %}

with

{% for platform, model in platforms %}
{{ platform }}_carts as (

    select
        shop_id,
        '{{ platform }}' as platform,
        source_cart_id,
        {%- if platform == 'shopify' %}
        checkout_token,
        {%- else %}
        null::text as checkout_token,
        {%- endif %}
        cart_token,
        customer_platform_id,
        email,
        phone,
        first_name,
        last_name,
        language,
        currency,
        cart_url,
        line_items,
        cart_value,
        email_consent,
        message_consent,
        {%- if platform == 'shopify' %}
        completed_at as source_completed_at,
        {%- elif platform == 'ticimax' %}
        null::timestamptz as source_completed_at,
        {%- else %}
        case when is_ordered_at_source then updated_at end as source_completed_at,
        {%- endif %}
        created_at,
        updated_at,
        last_activity_at,
        ingest_path,
        landed_at
    from {{ ref(model) }}

),

{% endfor %}

unioned as (

    {% for platform, model in platforms %}
    select * from {{ platform }}_carts
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

final as (

    select
        {{ hash_key(['shop_id', 'platform', 'source_cart_id']) }} as cart_key,
        *
    from unioned

)

select * from final
