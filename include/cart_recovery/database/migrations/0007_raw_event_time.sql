-- When a raw order was placed, or a raw cart last changed, read from its payload the way the dbt
-- staging models read it (stg_<platform>__orders.ordered_at, the carts' record_updated_at).
-- The dispatcher's send-time guard reads orders and carts that landed after the last build, so
-- it needs their own time, not their landing time: a first poll lands years of history at once.
-- tests/dispatch/test_claims.py holds this function to the staging models' results.

-- A platform timestamp string, as the macro parse_timestamp reads it: ISO 8601 with an offset as
-- is, without one in the assumed zone, WCF "/Date(ms+zzzz)/" as epoch milliseconds.
create or replace function ops.parse_platform_time(value text, assumed_zone text)
returns timestamptz
language plpgsql immutable parallel safe as $$
begin
    if nullif(trim(value), '') is null then
        return null;
    elsif value ~ '^/Date\(-?[0-9]+' then
        return to_timestamp(substring(value from '^/Date\((-?[0-9]+)')::bigint / 1000.0);
    elsif value ~ '[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?\s*(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)$' then
        return value::timestamptz;
    else
        return value::timestamp at time zone assumed_zone;
    end if;
exception when others then
    return null;  -- an unreadable time: the caller treats it as recent (the safe side)
end
$$;

create or replace function ops.raw_event_time(platform text, entity text, payload jsonb)
returns timestamptz
language sql immutable parallel safe as $$
    select case
        when entity = 'order' then case platform
            when 'shopify' then ops.parse_platform_time(payload->>'created_at', 'UTC')
            when 'woocommerce' then ops.parse_platform_time(payload->>'date_created_gmt', 'UTC')
            when 'ticimax' then ops.parse_platform_time(payload->>'SiparisTarihi', 'Europe/Istanbul')
            when 'ideasoft' then ops.parse_platform_time(payload->>'createdAt', 'Europe/Istanbul')
        end
        when entity = 'cart' then case platform
            when 'shopify' then ops.parse_platform_time(payload->>'updated_at', 'UTC')
            when 'woocommerce' then ops.parse_platform_time(payload->>'date_modified_gmt', 'UTC')
            when 'ticimax' then ops.parse_platform_time(
                coalesce(payload->>'GuncellemeTarihi', payload->>'SepetTarihi'), 'Europe/Istanbul')
            when 'ideasoft' then ops.parse_platform_time(
                coalesce(payload->>'updatedAt', payload->>'createdAt'), 'Europe/Istanbul')
        end
    end
$$;
