{#
    A join that looks rows of `relation` up by key once per row of the outer query: `keys` maps
    columns of `relation` to SQL expressions over the outer row, e.g.
    keyed_lookup(ref('abandoned_carts'), 'carts', {'cart_key': 'changed.cart_key'}).

    For the few rows of an incremental build this goes through the index on those columns. It is
    a lateral subquery with `offset 0`, which keeps the planner from flattening it into an
    ordinary join: for that, with the row counts it expects, it would hash the whole table.
    `outer` keeps the outer rows without a match (left join); `condition` is an extra filter
    over `alias`.
#}
{% macro keyed_lookup(relation, alias, keys, columns='*', condition=none, outer=false) -%}
    {{ 'left join' if outer else 'cross join' }} lateral (
        select {{ columns }}
        from {{ relation }} as {{ alias }}
        where
            {%- for column, expression in keys.items() %}
            {% if not loop.first %}and {% endif %}{{ alias }}.{{ column }} = {{ expression }}
            {%- endfor %}
            {%- if condition %}
            and {{ condition }}
            {%- endif %}
        offset 0
    ) as {{ alias }}{{ ' on true' if outer else '' }}
{%- endmacro %}
