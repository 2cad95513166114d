"""``dispatch_due`` one chunk ahead: the next chunk is claimed while this one sends, and every
claimed row is still sent once and recorded, also when a later claim fails.

The plan is a real dbt build of the recovery story (tests/dbt/recovery_story.py); the sends go
to the simulator's fake WhatsApp Cloud API and SMTP sink on loopback. Chunks of one row make
every row its own chunk, so the overlap between claims and sends is exercised on a small plan.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extras import RealDictCursor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dbt"))  # the story's raw-row helpers

from dbt_raw_rows import run_dbt
from recovery_story import AS_OF, story

from cart_recovery.dispatch import dispatcher, outbox
from cart_recovery.dispatch.config import DispatchSettings
from cart_recovery.simulator import run_simulator

pytestmark = pytest.mark.slow

NOW = AS_OF
SETTINGS = DispatchSettings(
    lookback=timedelta(days=90), expire_after=timedelta(days=90), quiet_hours=None, chunk_size=1
)


@pytest.fixture(scope="module")
def database(module_database):
    return module_database


@pytest.fixture(scope="module")
def built(database) -> Iterator[str]:
    conn = psycopg2.connect(database.url)
    story().write(conn)
    conn.close()
    run_dbt("build", "--full-refresh", as_of=AS_OF)
    yield database.url


@pytest.fixture
def sim(built) -> Iterator:
    with run_simulator(seed=5, carts_per_shop=1, smtp=True) as sim, pytest.MonkeyPatch.context() as env:
        for name, value in sim.connection_env().items():
            env.setenv(name, value)
        env.setenv("CART_RECOVERY_LINK_SECRET", "test-link-secret-0123456789")
        env.setenv("CART_RECOVERY_PUBLIC_URL", "https://hooks.example.test")
        sim.whatsapp.knobs.pair_interval = 0
        sim.whatsapp.knobs.status_callbacks = "off"
        yield sim
    conn = psycopg2.connect(built)
    with conn, conn.cursor() as cursor:
        cursor.execute("truncate ops.recovery_outbox, ops.consent_revocations, ops.conversations")
    conn.close()


def outbox_rows(url: str) -> dict[str, dict]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor(cursor_factory=RealDictCursor) as cursor:
            cursor.execute("select * from ops.recovery_outbox where stage = 1")
            return {row["plan_key"]: dict(row) for row in cursor.fetchall()}
    finally:
        conn.close()


def dispatch(url: str, sim, claimer: str = "test-chunks", settings: DispatchSettings = SETTINGS):
    shops = {shop.id: shop for shop in sim.shop_models()}
    return dispatcher.dispatch_due(1, NOW, database_url=url, claimer=claimer, settings=settings, shops=shops)


def assert_sent_once(rows: dict[str, dict], sim) -> None:
    """Each sent row reached its provider once, and nothing reached a provider without a sent row."""
    whatsapp = sim.whatsapp.messages()
    assert all(n == 1 for n in Counter(m.callback_data for m in whatsapp).values())
    sent_whatsapp = {
        r["provider_message_id"]
        for r in rows.values()
        if r["status"] == "sent" and r["channel"] == "whatsapp"
    }
    assert {m.id for m in whatsapp} == sent_whatsapp
    for message in whatsapp:
        assert rows[message.callback_data]["provider_message_id"] == message.id
    sent_email = {
        r["provider_message_id"] for r in rows.values() if r["status"] == "sent" and r["channel"] == "email"
    }
    assert sorted(m.message_id for m in sim.smtp.messages) == sorted(sent_email)


def test_chunks_of_one_send_every_due_row_once_and_record_it(built, sim):
    summary = dispatch(built, sim)
    rows = outbox_rows(built)
    statuses = Counter(row["status"] for row in rows.values())
    assert statuses["sent"] >= 3, statuses  # several chunks of one row each
    assert statuses["sending"] == 0 and statuses["unknown"] == 0, statuses
    assert summary.enqueued == len(rows)
    assert summary.counts["sent"] == statuses["sent"]
    assert summary.claimed == sum(1 for row in rows.values() if row["claimed_by"] == "test-chunks")
    assert_sent_once(rows, sim)
    # a second run finds nothing left to send
    again = dispatch(built, sim, claimer="test-chunks-again")
    assert again.claimed == 0
    assert_sent_once(outbox_rows(built), sim)


def test_the_next_chunk_is_claimed_while_this_one_sends(built, sim, monkeypatch):
    sim.whatsapp.knobs.response_delay = 0.3  # each WhatsApp answer takes 0.3 s
    in_flight = 0
    claims_during_sends = 0
    lock = threading.Lock()
    original_claim = outbox.claim

    def claim(*args, **kwargs):
        nonlocal claims_during_sends
        with lock:
            claims_during_sends += in_flight > 0
        return original_claim(*args, **kwargs)

    from cart_recovery.dispatch.whatsapp import WhatsAppClient

    original_send = WhatsAppClient.send_template

    async def send_template(self, *args, **kwargs):
        nonlocal in_flight
        with lock:
            in_flight += 1
        try:
            return await original_send(self, *args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(outbox, "claim", claim)
    monkeypatch.setattr(WhatsAppClient, "send_template", send_template)
    dispatch(built, sim)
    rows = outbox_rows(built)
    whatsapp_sent = sum(1 for r in rows.values() if r["status"] == "sent" and r["channel"] == "whatsapp")
    assert whatsapp_sent >= 2, "the story has WhatsApp rows to send"
    assert claims_during_sends >= 1, "no claim overlapped a send: the dispatcher waited for each chunk"
    assert_sent_once(rows, sim)


def test_a_failing_claim_still_sends_and_records_what_was_claimed(built, sim, monkeypatch):
    calls = 0
    claimed_before: list[str] = []
    original_claim = outbox.claim

    def claim(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise psycopg2.OperationalError("the server closed the connection (test)")
        claimed, decided = original_claim(*args, **kwargs)
        claimed_before.extend(row.plan_key for row in claimed)
        return claimed, decided

    monkeypatch.setattr(outbox, "claim", claim)
    with pytest.raises(psycopg2.OperationalError, match="closed the connection"):
        dispatch(built, sim)
    rows = outbox_rows(built)
    claimed = {key for key, row in rows.items() if row["claimed_by"] == "test-chunks"}
    assert claimed_before, "the two chunks before the failure had a row to send"
    assert claimed == set(claimed_before)  # and nothing after the failing claim
    for key in claimed:  # sent and recorded before the error came out
        assert rows[key]["status"] == "sent" and rows[key]["sent_at"] is not None, rows[key]
    assert_sent_once(rows, sim)
    # the rest is still queued and a later run sends it, once
    dispatch(built, sim, claimer="test-chunks-after", settings=replace(SETTINGS, chunk_size=200))
    rows = outbox_rows(built)
    assert not [row for row in rows.values() if row["status"] in ("queued", "sending", "unknown")]
    assert_sent_once(rows, sim)


def test_a_claim_locks_every_person_of_its_chunk_in_one_statement(database):
    people = ["customer-b", "customer-a", "cart-c"]
    holder = psycopg2.connect(database.url)
    other = psycopg2.connect(database.url)
    other.autocommit = True

    def free(person: str) -> bool:
        with other.cursor() as cursor:
            cursor.execute(
                "select pg_try_advisory_xact_lock(hashtextextended('cart-recovery person ' || %s, 0))",
                (person,),
            )
            return cursor.fetchone()[0]

    try:
        with holder.cursor() as cursor:
            cursor.execute(outbox.LOCK_PEOPLE_SQL, (sorted(people),))
            assert cursor.fetchone()[0] == len(people)
        assert not any(free(person) for person in people)  # held by the claiming transaction
        assert free("someone-else")
        holder.commit()
        assert all(free(person) for person in people)  # released with it
    finally:
        holder.close()
        other.close()
