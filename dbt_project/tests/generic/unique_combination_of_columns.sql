{#
    The combination of `combination_of_columns` is unique in the model (dbt_utils'
    test of the same name, written here because the dbt hub cannot be reached).
#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

    select
        {{ combination_of_columns | join(', ') }},
        count(*) as rows_with_this_combination
    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1

{% endtest %}
