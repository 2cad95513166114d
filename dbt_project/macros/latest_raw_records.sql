{#
    The latest state of each record of one platform entity, across both ingest paths.

    Reads raw.webhook_events (rows whose topic is in `webhook_topics`) and raw.polled_records
    (rows of `entity`), takes the record id and updated time from the payload with the given SQL
    expressions (over `payload`), and keeps one row per (shop_id, record_id): the latest updated
    time wins; on a tie the webhook wins (it is pushed at the change), then the later landing.

    `open_predicate` (SQL over `payload`; cart models only) says whether a version shows the
    record still open (a cart not yet completed); `last_open_updated_at` is the latest updated
    time among open versions, so a cart completed hours after it was abandoned keeps its
    abandonment time.

    Incremental (the calling staging model is an incremental table keyed on shop_id and
    `id_column`): only raw rows landed since the latest landed_at in the table, minus var
    landing_lookback_minutes, are read; a record's new best version replaces the stored one only
    when it is newer by the same ordering. So the cost follows what landed, not the history.

    `carry` = (SQL over `payload`, the staging column that stores it): an attribute that only some
    versions have (Shopify's checkout token comes with webhooks, never with a poll). `carried` is
    its value in the latest version that has one, so a newer version without it does not erase
    it; incremental builds fall back to the stored column, so they agree with a full refresh.

    Columns: shop_id, record_id, record_updated_at, last_open_updated_at, carried (with `carry`),
    landed_at, ingest_path ('webhook' | 'poll'), payload. Used only by staging models.
#}
{% macro latest_raw_records(platform, entity, webhook_topics, record_id, updated_at, id_column, open_predicate=none, carry=none) %}
    {%- set open_expression = open_predicate if open_predicate else 'true' -%}
    {%- if is_incremental() %}
        {%- set landed_since = watermark_literal('max(landed_at)') -%}
    {%- endif %}
    select
        best.shop_id,
        best.record_id,
        best.record_updated_at,
        {% if open_predicate and is_incremental() -%}
        greatest(best.new_last_open_updated_at, stored.last_open_updated_at)
        {%- else -%}
        best.new_last_open_updated_at
        {%- endif %} as last_open_updated_at,
        {%- if carry %}
        {% if is_incremental() -%}
        coalesce(best.new_carried, stored.{{ carry[1] }})
        {%- else -%}
        best.new_carried
        {%- endif %} as carried,
        {%- endif %}
        best.landed_at,
        best.ingest_path,
        best.payload
    from (
        select
            versions.*,
            row_number() over (
                partition by shop_id, record_id
                order by record_updated_at desc nulls last, path_rank, landed_at desc
            ) as version_rank,
            max(case when is_open then record_updated_at end)
                over (partition by shop_id, record_id) as new_last_open_updated_at
            {%- if carry %},
            first_value(carried) over (
                partition by shop_id, record_id
                order by carried is null, record_updated_at desc nulls last, path_rank, landed_at desc
            ) as new_carried
            {%- endif %}
        from (
            {%- if webhook_topics %}
            select
                shop_id,
                ({{ record_id }})::text as record_id,
                {{ updated_at }} as record_updated_at,
                received_at as landed_at,
                'webhook' as ingest_path,
                1 as path_rank,
                coalesce(({{ open_expression }}), true) as is_open,
                {%- if carry %}
                ({{ carry[0] }}) as carried,
                {%- endif %}
                payload
            from {{ source('raw', 'webhook_events') }}
            where platform = '{{ platform }}'
                and topic in ({% for topic in webhook_topics %}'{{ topic }}'{% if not loop.last %}, {% endif %}{% endfor %})
                and jsonb_typeof(payload) = 'object'
                {%- if is_incremental() %}
                and received_at >= {{ landed_since }}
                {%- endif %}

            union all
            {% endif %}

            select
                shop_id,
                coalesce(({{ record_id }})::text, record_id) as record_id,
                coalesce({{ updated_at }}, record_updated_at) as record_updated_at,
                fetched_at as landed_at,
                'poll' as ingest_path,
                2 as path_rank,
                coalesce(({{ open_expression }}), true) as is_open,
                {%- if carry %}
                ({{ carry[0] }}) as carried,
                {%- endif %}
                payload
            from {{ source('raw', 'polled_records') }}
            where platform = '{{ platform }}'
                and entity = '{{ entity }}'
                and jsonb_typeof(payload) = 'object'
                {%- if is_incremental() %}
                and fetched_at >= {{ landed_since }}
                {%- endif %}
        ) as versions
        where record_id is not null
    ) as best
    {%- if is_incremental() %}
    left join {{ this }} as stored
        on stored.shop_id = best.shop_id
        and stored.{{ id_column }} = best.record_id
    {%- endif %}
    where best.version_rank = 1
    {%- if is_incremental() %}
        -- keep the stored version unless the new one is later by the same ordering
        and (
            stored.{{ id_column }} is null
            or (best.record_updated_at, -best.path_rank, best.landed_at)
                > (stored.updated_at, case when stored.ingest_path = 'webhook' then -1 else -2 end, stored.landed_at)
        )
    {%- endif %}
{% endmacro %}


{# A JSON array from the payload, or an empty array when absent or not an array. #}
{% macro json_array(expression) -%}
    case when jsonb_typeof({{ expression }}) = 'array' then {{ expression }} else '[]'::jsonb end
{%- endmacro %}


{# A JSON boolean-ish field ("true", "1", "yes" / "false", "0", "no") as boolean, null if absent. #}
{% macro json_bool(expression) -%}
    case
        when lower({{ expression }}) in ('true', 't', '1', 'yes', 'y') then true
        when lower({{ expression }}) in ('false', 'f', '0', 'no', 'n') then false
    end
{%- endmacro %}
