"""The claim's query cost as the tables grow (a review finding, kept as a regression test).

The send-time facts (``guards.FACTS_SQL``) run once per chunk of claimed rows. A shop that has run
for a year has hundreds of thousands of orders and outbox rows; the chunk's facts must then be
index lookups for the chunk's people, not scans of everything. The plan comes from a real dbt
build (the review story); the history is added to the tables the build wrote, then analysed, and
PostgreSQL's own plan (EXPLAIN) is read.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extras import Json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # review_story
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dbt"))  # the story's raw-row helpers

from dbt_raw_rows import run_dbt
from recovery_story import AS_OF
from review_story import review_story

from cart_recovery.dispatch import guards, outbox
from cart_recovery.dispatch.config import DispatchSettings

pytestmark = pytest.mark.slow

SETTINGS = DispatchSettings(lookback=timedelta(days=90), expire_after=timedelta(days=90), quiet_hours=None)
HISTORY = 100_000  # a year of a mid-size shop


@pytest.fixture(scope="module")
def database(module_database):
    return module_database


@pytest.fixture(scope="module")
def grown(database) -> Iterator[str]:
    """The review story built, then a year of other people's orders and outbox rows."""
    conn = psycopg2.connect(database.url)
    review_story().write(conn)
    run_dbt("build", "--full-refresh", as_of=AS_OF)
    with conn, conn.cursor() as cursor:
        cursor.execute(
            """
            insert into staging.stg_shopify__orders
            select (jsonb_populate_record(
                null::staging.stg_shopify__orders,
                to_jsonb(orders) || jsonb_build_object(
                    'source_order_id', 'history-' || n,
                    'customer_platform_id', (5000000 + n)::text,
                    'email', 'history' || n || '@example.com',
                    'phone', '+90532' || lpad(n::text, 7, '0')
                )
            )).*
            from (select * from staging.stg_shopify__orders order by source_order_id limit 1) as orders,
                generate_series(1, %(n)s) as n
            """,
            {"n": HISTORY},
        )
        cursor.execute(
            """
            insert into ops.recovery_outbox (plan_key, cart_key, customer_key, shop_id, platform, stage,
                channel, status, planned_due_at, due_at, recipient, sent_at, planned_by, created_at,
                updated_at)
            select 'history-' || n, 'history-cart-' || (n / 3), 'history-customer-' || (n / 3),
                'anatolia-shopify', 'shopify', 1 + n %% 3, 'whatsapp', 'read', at, at,
                '+90533' || lpad((n / 3)::text, 7, '0'), at, %(planned)s, at, at
            from generate_series(1, %(n)s) as n,
                lateral (select %(as_of)s::timestamptz - make_interval(mins => n) as at) as moment
            """,
            {"n": HISTORY, "as_of": AS_OF - timedelta(days=30), "planned": Json({"template": "x"})},
        )
        cursor.execute("analyze staging.stg_shopify__orders; analyze ops.recovery_outbox")
    conn.close()
    yield database.url


def seq_scans(plan: dict) -> set[str]:
    """The relations a plan reads from end to end."""
    found = {plan["Relation Name"]} if plan.get("Node Type") == "Seq Scan" else set()
    for child in plan.get("Plans", []):
        found |= seq_scans(child)
    return found


def test_a_chunks_facts_do_not_scan_every_order(grown):
    conn = psycopg2.connect(grown)
    try:
        with conn, conn.cursor() as cursor:
            outbox.enqueue_due(cursor, 1, AS_OF, SETTINGS)
            cursor.execute("select plan_key from ops.recovery_outbox where status = 'queued' and stage = 1")
            keys = [key for (key,) in cursor.fetchall()]
            assert keys
            cursor.execute("explain (format json) " + guards.FACTS_SQL, guards.facts_parameters(keys, AS_OF))
            [[explained]] = cursor.fetchall()
    finally:
        conn.close()
    scanned = seq_scans(explained[0]["Plan"])
    assert "stg_shopify__orders" not in scanned, scanned
    assert "recovery_outbox" not in scanned, scanned
