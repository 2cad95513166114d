"""``dispatch_due`` and the stage trigger against a real dbt build: review findings, as regression tests.

``dispatch_due`` sends through the simulator's fake WhatsApp Cloud API and SMTP sink over loopback;
the trigger (``DuePlanTrigger``) asks the real warehouse, as the triggerer runs it. Each test failed
before its fix.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import psycopg2
import pytest
from airflow.sdk.exceptions import TaskDeferred

sys.path.insert(0, str(Path(__file__).resolve().parent))  # review_story
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dbt"))  # the story's raw-row helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))  # the triggerer's plugins

from dbt_raw_rows import run_dbt
from recovery_story import AS_OF, SHOPIFY
from review_story import EMPTY_CHECKOUT, review_story
from warehouse_rows import rows

from cart_recovery.dispatch import outbox
from cart_recovery.dispatch.config import DispatchSettings
from cart_recovery.dispatch.dispatcher import channels_from_connections, dispatch_due
from cart_recovery.simulator import run_simulator

pytestmark = pytest.mark.slow

SETTINGS = DispatchSettings(lookback=timedelta(days=90), expire_after=timedelta(days=90), quiet_hours=None)
NOW = AS_OF


@pytest.fixture(scope="module")
def database(module_database):
    return module_database


@pytest.fixture(scope="module")
def built(database) -> Iterator[str]:
    conn = psycopg2.connect(database.url)
    review_story().write(conn)
    conn.close()
    run_dbt("build", "--full-refresh", as_of=AS_OF)
    yield database.url


@pytest.fixture
def url(built) -> Iterator[str]:
    yield built
    conn = psycopg2.connect(built)
    with conn, conn.cursor() as cursor:
        cursor.execute("truncate ops.recovery_outbox, ops.consent_revocations, ops.conversations")
    conn.close()


@pytest.fixture(scope="module")
def sim(built) -> Iterator:
    """The fake WhatsApp Cloud API and SMTP sink, and the links' settings, in the environment."""
    with run_simulator(seed=5, carts_per_shop=1, smtp=True) as sim, pytest.MonkeyPatch.context() as env:
        for name, value in sim.connection_env().items():
            env.setenv(name, value)
        env.setenv("CART_RECOVERY_LINK_SECRET", "review-link-secret-0123456789")
        env.setenv("CART_RECOVERY_PUBLIC_URL", "https://hooks.example.test")
        sim.whatsapp.knobs.pair_interval = 0
        yield sim


def test_one_cart_that_cannot_be_rendered_does_not_lose_the_chunk(url, sim):
    shops = {shop.id: shop for shop in sim.shop_models()}
    try:
        summary = dispatch_due(
            1,
            NOW,
            database_url=url,
            claimer="review-chunk",
            settings=SETTINGS,
            channels=channels_from_connections(url, shops),
            shops=shops,
        )
    finally:
        stored = rows(url, "select plan_key, cart_key, status, reason from ops.recovery_outbox")
    stuck = [row for row in stored if row["status"] == "sending"]
    assert stuck == [], f"{len(stuck)} rows left 'sending' (their answers lost)"
    [empty] = rows(
        url,
        "select plan.plan_key from marts.recovery_plan as plan join marts.abandoned_carts as carts "
        "using (cart_key) where carts.shop_id = %s and carts.source_cart_id = %s and plan.stage = 1",
        (SHOPIFY, str(EMPTY_CHECKOUT)),
    )
    [row] = [row for row in stored if row["plan_key"] == empty["plan_key"]]
    assert row["status"] in ("failed", "suppressed")
    assert summary.counts["sent"] >= 5


def test_the_trigger_goes_idle_once_the_dispatcher_has_taken_everything_it_would(url, monkeypatch):
    monkeypatch.setenv("CART_RECOVERY_DISPATCH_LOOKBACK_DAYS", "1")
    settings = DispatchSettings.from_env()
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            outbox.enqueue_due(cursor, 1, NOW, settings)
        while outbox.claim(conn, 1, NOW, settings, "review-lookback", {})[1]:
            pass  # the send task: everything due is claimed (or deferred, suppressed...)
    finally:
        conn.close()
    from cart_recovery.dispatch.sensor import DuePlanSensor

    sensor = DuePlanSensor(task_id="wait_for_due", stage=1, as_of=NOW.isoformat())
    with pytest.raises(TaskDeferred) as deferred:  # the sensor defers: the trigger it hands over
        sensor.execute({})
    event = asyncio.run(_first_event(deferred.value.trigger))
    assert event["status"] == "idle", event


def test_a_replay_moment_without_an_offset_is_read_as_utc(url):
    from cart_recovery_triggers import DuePlanTrigger

    naive = NOW.astimezone(UTC).replace(tzinfo=None).isoformat()
    event = asyncio.run(_first_event(DuePlanTrigger(stage=1, as_of=naive)))
    assert event["status"] in ("due", "idle") and event["now"] == NOW.isoformat()


async def _first_event(trigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")
