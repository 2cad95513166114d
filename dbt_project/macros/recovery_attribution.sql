{#
    Whether an order counts as recovering an abandonment of the same customer: placed after the
    abandonment and within var recovery_attribution_days of it. With a coupon on the order, that
    is a coupon-driven recovery (after which the policy offers no coupon for a while).
#}
{% macro within_recovery_attribution(abandoned_at, ordered_at) -%}
    {{ abandoned_at }} < {{ ordered_at }}
        and {{ abandoned_at }}
            >= {{ ordered_at }} - make_interval(days => {{ var('recovery_attribution_days') }})
{%- endmacro %}
