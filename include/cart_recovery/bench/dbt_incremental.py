"""dbt build cost: a full build over a large history, then an incremental build after new carts.

Lands ``history`` synthetic Shopify checkouts (the REST shape of docs/raw-layer.md) in
``raw.polled_records`` of a dedicated ``<warehouse>_bench`` database (with the normal form of
their phone numbers in ``ops.phone_numbers``, as ingest stores it, and the shop in ``ops.shops``,
as ``cart_transform`` copies it), runs every model with
``--full-refresh``, lands ``new`` more carts one hour later and runs the models again
(incremental), then once more with nothing new. as_of goes in CART_RECOVERY_AS_OF, as the
cart_transform DAG passes it. Target (issue 4): the incremental build takes at
most 10% of the full build and at most 30 s on the 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2

from cart_recovery import phones, settings
from cart_recovery.database import Database, migrate
from cart_recovery.environment import project_environment
from cart_recovery.errors import CartRecoveryError
from cart_recovery.shops import Shop, sync_shops_table

log = logging.getLogger(__name__)

NAME = "dbt_incremental"
BASE_TIME = datetime(2026, 11, 1, tzinfo=UTC)
HISTORY_DAYS = 180

# One statement generates a slice of carts server-side: ids [first, last], activity spread over
# [start, start + span). Customers repeat (about 3 carts each), 30% of carts are completed.
_GENERATE = """
insert into raw.polled_records
    (platform, shop_id, entity, record_id, record_updated_at, fetched_at, payload)
select
    'shopify', 'anatolia-shopify', 'cart', carts.id::text, carts.updated_at,
    carts.updated_at + interval '5 minutes',
    jsonb_build_object(
        'id', carts.id,
        'token', md5(carts.id::text),
        'cart_token', md5('cart' || carts.id),
        'email', 'customer' || carts.customer || '@example.com',
        'phone', '+90555' || lpad(carts.customer::text, 7, '0'),
        'customer_locale', case when carts.customer %% 3 = 0 then 'en' else 'tr' end,
        'customer', jsonb_build_object(
            'id', 5000000 + carts.customer,
            'email', 'customer' || carts.customer || '@example.com',
            'phone', '+90555' || lpad(carts.customer::text, 7, '0'),
            'first_name', case when carts.customer %% 2 = 0 then 'Ayşe' else 'John' end,
            'last_name', case when carts.customer %% 2 = 0 then 'Yılmaz' else 'Smith' end,
            'email_marketing_consent', jsonb_build_object(
                'state', case when carts.customer %% 5 = 0 then 'not_subscribed' else 'subscribed' end),
            'sms_marketing_consent', jsonb_build_object(
                'state', case when carts.customer %% 4 = 0 then 'not_subscribed' else 'subscribed' end)
        ),
        'line_items', jsonb_build_array(jsonb_build_object(
            'product_id', 900 + carts.id %% 50,
            'variant_id', 9000 + carts.id %% 200,
            'title', 'Linen Shirt',
            'variant_title', 'M',
            'quantity', 1 + carts.id %% 3,
            'price', (100 + carts.id %% 900)::text || '.00'
        )),
        'total_price', ((100 + carts.id %% 900) * (1 + carts.id %% 3))::text || '.00',
        'currency', 'TRY',
        'abandoned_checkout_url',
            'https://anatolia-linen.myshopify.com/checkouts/' || md5(carts.id::text) || '/recover',
        'created_at', to_char(carts.updated_at - interval '20 minutes', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'updated_at', to_char(carts.updated_at, 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'completed_at', case when carts.id %% 10 < 3
            then to_char(carts.updated_at + interval '2 hours', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') end
    )
from (
    select
        ids.id,
        (ids.id * 7919) %% %(customers)s as customer,
        %(start)s::timestamptz
            + ((ids.id - %(first)s)::double precision / %(count)s) * %(span)s::interval as updated_at
    from generate_series(%(first)s::bigint, %(last)s::bigint) as ids (id)
) as carts
on conflict do nothing
"""


# The shop the carts belong to, as the shops file would declare it.
BENCH_SHOP = {
    "id": "anatolia-shopify",
    "platform": "shopify",
    "domain": "anatolia-linen.myshopify.com",
    "api_base_url": "https://anatolia-linen.myshopify.com",
    "country": "TR",
    "timezone": "Europe/Istanbul",
    "currency": "TRY",
    "language": "tr",
    "conn_id": "anatolia_shopify",
}
# The phone strings of the carts just generated (every generated cart has them at these keys).
_LANDED_PHONES = """
select distinct phone from raw.polled_records,
    lateral (values (payload ->> 'phone'), (payload #>> '{customer,phone}')) as found (phone)
where shop_id = %(shop_id)s and entity = 'cart' and record_id::bigint between %(first)s and %(last)s
    and phone is not null
"""


def _land(url: str, first: int, count: int, customers: int, start: datetime, span: timedelta) -> float:
    """Generate the carts, and store the normal form of their phone numbers as ingest would."""
    started = time.perf_counter()
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        bounds = {"first": first, "last": first + count - 1}
        generated = {**bounds, "count": count, "customers": customers, "start": start, "span": span}
        cur.execute(_GENERATE, generated)
        cur.execute(_LANDED_PHONES, {**bounds, "shop_id": BENCH_SHOP["id"]})
        strings = [phone for (phone,) in cur.fetchall()]
        phones.record_phones(cur, BENCH_SHOP["id"], BENCH_SHOP["country"], strings)
    return time.perf_counter() - started


def _dbt(
    env: dict[str, str],
    *args: str,
    as_of: datetime | None = None,
    timings: dict[str, Any] | None = None,
) -> float:
    """Run dbt and return its wall time; ``timings`` receives the slowest nodes of run_results.

    ``as_of`` goes in CART_RECOVERY_AS_OF, as the cart_transform DAG passes it.
    """
    project = env["DBT_PROJECT_DIR"]
    if as_of is not None:
        env = {**env, "CART_RECOVERY_AS_OF": as_of.isoformat()}
    started = time.perf_counter()
    result = subprocess.run(
        ["dbt", *args, "--project-dir", project, "--profiles-dir", project],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise CartRecoveryError(f"dbt {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    if timings is not None:
        timings.update(_node_timings(Path(env["DBT_TARGET_PATH"]) / "run_results.json"))
    return elapsed


def _node_timings(run_results: Path) -> dict[str, Any]:
    """Where a build's time went: dbt's own total, the models' sum and the slowest models."""
    results = json.loads(run_results.read_text())
    nodes = sorted(results["results"], key=lambda node: node["execution_time"], reverse=True)
    return {
        "dbt_elapsed_seconds": round(results["elapsed_time"], 2),
        "models_seconds_sum": round(sum(node["execution_time"] for node in nodes), 2),
        "models": len(nodes),
        "slowest": {node["unique_id"].split(".")[-1]: round(node["execution_time"], 2) for node in nodes[:8]},
    }


def run(*, history: int = 1_000_000, new: int = 10_000) -> dict[str, Any]:
    database = Database.from_env().with_suffix("_bench")
    database.ensure_databases()
    migrate.upgrade(database.url)
    env = project_environment(database, airflow_profile="bench")
    env["DBT_TARGET_PATH"] = str(settings.Paths.from_env().data / "bench-dbt-target")
    customers = max(1, history // 3)

    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute("truncate raw.polled_records, raw.webhook_events, ops.phone_numbers")
    with contextlib.closing(psycopg2.connect(database.url)) as conn:
        sync_shops_table(conn, [Shop.model_validate(BENCH_SHOP)])
    log.info("Landing %d historical carts ...", history)
    chunk = 250_000
    landed_s = 0.0
    for first in range(1, history + 1, chunk):
        count = min(chunk, history - first + 1)
        day_span = timedelta(days=HISTORY_DAYS) * count / history
        start = (
            BASE_TIME - timedelta(days=HISTORY_DAYS) + timedelta(days=HISTORY_DAYS) * (first - 1) / history
        )
        landed_s += _land(database.url, first, count, customers, start, day_span)
        log.info("  %d / %d carts landed", first + count - 1, history)
    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute("analyze raw.polled_records")

    as_of_full = BASE_TIME
    _dbt(env, "seed", "--full-refresh")
    log.info("Full build (--full-refresh) over %d carts ...", history)
    breakdown: dict[str, dict[str, Any]] = {"full": {}, "incremental": {}, "nothing_new": {}}
    full_s = _dbt(env, "run", "--full-refresh", as_of=as_of_full, timings=breakdown["full"])

    log.info("Landing %d new carts and building incrementally ...", new)
    _land(database.url, history + 1, new, customers, BASE_TIME, timedelta(hours=1))
    as_of_incremental = BASE_TIME + timedelta(hours=2)
    incremental_s = _dbt(env, "run", as_of=as_of_incremental, timings=breakdown["incremental"])
    nothing_new_s = _dbt(env, "run", as_of=as_of_incremental, timings=breakdown["nothing_new"])

    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from marts.abandoned_carts")
        abandoned = cur.fetchone()[0]
        cur.execute("select count(*) from marts.recovery_plan")
        plan_rows = cur.fetchone()[0]

    ratio = incremental_s / full_s
    return {
        "workload": {
            "historical_carts": history,
            "new_carts": new,
            "customers": customers,
            "platform": "shopify (REST checkout shape, polled path)",
            "dbt_command": "dbt run (all models; tests not included)",
        },
        "landing_seconds": round(landed_s, 2),
        "full_build_seconds": round(full_s, 2),
        "incremental_build_seconds": round(incremental_s, 2),
        "nothing_new_build_seconds": round(nothing_new_s, 2),
        "incremental_to_full_ratio": round(ratio, 4),
        "breakdown": breakdown,
        "rows": {"marts.abandoned_carts": abandoned, "marts.recovery_plan": plan_rows},
        "targets": {"ratio_at_most": 0.10, "incremental_seconds_at_most": 30},
        "targets_met": ratio <= 0.10 and incremental_s <= 30,
        "_database": database.url,
    }


def main(history: int, new: int, *, quick: bool = False) -> dict[str, Any]:
    from cart_recovery.bench.results import write_result

    result = run(history=history, new=new)
    url = result.pop("_database")
    path = write_result(NAME, result, url, quick=quick)
    log.info("%s: %s", NAME, os.fspath(path))
    return result
