"""Exactly once: racing dispatchers, a dispatcher killed mid-batch, a task retried after the send.

The plan is the simulator's shops, polled and built by dbt (``dispatch_helpers.simulated_plan``);
messages go over loopback to the simulator's fake WhatsApp Cloud API and SMTP sink, whose logs are
the ground truth: a plan row found twice there was sent twice. Dispatchers run in threads, in
processes of their own and in the test, against the real PostgreSQL outbox.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from dispatch_helpers import (
    AS_OF,
    SETTINGS,
    DispatcherProcess,
    accepted_per_plan_row,
    assert_each_sent_once,
    emailed_plan_rows,
    outbox,
    post_status,
    reset,
    simulated_plan,
    wait_until,
)

from cart_recovery.dispatch.dispatcher import Summary, dispatch_due
from cart_recovery.simulator import Simulator

pytestmark = pytest.mark.slow

STAGE = 1
RUN_ID = "manual__2025-11-24T12:00:00+00:00"
SENT = ("sent", "delivered", "read")


def task_claimer(try_number: int) -> str:
    """The send task's claimer, as ``stage_dag.send_due`` builds it."""
    return f"recovery_stage_{STAGE}/{RUN_ID}/send_due/try-{try_number}"


@pytest.fixture(scope="module")
def database(module_database):
    return module_database


@pytest.fixture(scope="module")
def plan(database, airflow_db, dbt_manifest, tmp_path_factory) -> Iterator[Simulator]:
    with simulated_plan(tmp_path_factory.mktemp("plan"), seed=23, carts_per_shop=80) as sim:
        yield sim


@pytest.fixture(scope="module")
def reference(plan, database) -> dict[str, str]:
    """What one dispatcher alone does with the stage's due batch: plan_key -> final status."""
    reset(database.url, plan)
    summary = dispatch_due(STAGE, AS_OF, database_url=database.url, claimer="alone", settings=SETTINGS)
    stored = assert_each_sent_once(plan, database.url)
    statuses = {key: row["status"] for key, row in stored.items()}
    assert summary.counts["sent"] == Counter(statuses.values())["sent"] >= 20, summary.as_dict()
    whatsapp = [row for row in stored.values() if row["status"] == "sent" and row["channel"] == "whatsapp"]
    assert len(whatsapp) >= 8, "the batch sends over WhatsApp and email"
    return statuses


@pytest.fixture
def sim(plan, database, reference) -> Simulator:
    reset(database.url, plan)
    return plan


def _statuses(url: str) -> dict[str, str]:
    return {key: row["status"] for key, row in outbox(url, STAGE).items()}


# -- two dispatchers at once -----------------------------------------------------------------------


def test_two_dispatcher_threads_racing_over_one_batch_send_each_row_once(sim, database, reference):
    sim.whatsapp.knobs.response_delay = 0.05  # each chunk is in flight a while: the other claims meanwhile
    settings = replace(SETTINGS, chunk_size=2)
    barrier = threading.Barrier(2)
    summaries: dict[str, Summary] = {}
    errors: list[BaseException] = []

    def dispatcher(name: str) -> None:
        try:
            barrier.wait(timeout=30)
            summaries[name] = dispatch_due(
                STAGE, AS_OF, database_url=database.url, claimer=name, settings=settings
            )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors

    stored = assert_each_sent_once(sim, database.url)
    assert _statuses(database.url) == reference  # the same outcome as one dispatcher alone
    sent = {key: row for key, row in stored.items() if row["status"] == "sent"}
    by_claimer = Counter(row["claimed_by"] for row in sent.values())
    assert set(by_claimer) == {"a", "b"}, f"both dispatchers sent part of the batch: {by_claimer}"
    assert by_claimer["a"] == summaries["a"].counts["sent"]
    assert by_claimer["b"] == summaries["b"].counts["sent"]
    # the batch was entered once, and every row decided by exactly one of them
    assert summaries["a"].enqueued + summaries["b"].enqueued == len(reference)
    decided = sum(sum(summary.counts.values()) for summary in summaries.values())
    assert decided == len(reference)


def test_two_dispatcher_processes_racing_over_one_batch_send_each_row_once(
    sim, database, reference, tmp_path
):
    sim.whatsapp.knobs.response_delay = 0.05
    go = tmp_path / "go"
    racers = [
        DispatcherProcess(STAGE, AS_OF, database.url, name, go=go, env={"CART_RECOVERY_DISPATCH_CHUNK": "2"})
        for name in ("p1", "p2")
    ]
    for racer in racers:
        racer.start()
    go.touch()  # both have imported everything by the time they see it, or soon after
    summaries = {racer.claimer: racer.summary() for racer in racers}

    stored = assert_each_sent_once(sim, database.url)
    assert _statuses(database.url) == reference
    by_claimer = Counter(row["claimed_by"] for row in stored.values() if row["status"] == "sent")
    assert set(by_claimer) == {"p1", "p2"}, by_claimer
    for name, summary in summaries.items():
        assert summary["counts"].get("sent", 0) == by_claimer[name]
    assert sum(sum(summary["counts"].values()) for summary in summaries.values()) == len(reference)


# -- a dispatcher killed mid-batch -----------------------------------------------------------------


def _kill_mid_batch(sim: Simulator, url: str, claimer: str) -> tuple[dict[str, dict], set[str]]:
    """Start a dispatcher process, SIGKILL it while the provider holds the answers of a chunk it
    sent (some chunks before are recorded); the outbox then, and the rows it left ``sending``."""
    sim.whatsapp.knobs.response_delay = 2.0  # the fake takes the message, then answers later
    process = DispatcherProcess(STAGE, AS_OF, url, claimer, env={"CART_RECOVERY_DISPATCH_CHUNK": "6"}).start()

    def mid_send() -> bool:
        statuses = _statuses(url)
        if "sent" not in statuses.values():
            return False
        return any(statuses.get(key) == "sending" for key in accepted_per_plan_row(sim))

    try:
        wait_until(mid_send, timeout=120, what="a chunk sent and not yet answered")
    finally:
        process.kill()
    sim.whatsapp.knobs.response_delay = 0
    at_kill = outbox(url, STAGE)
    left_sending = {key for key, row in at_kill.items() if row["status"] == "sending"}
    assert left_sending, "the kill left rows sending"
    assert all(at_kill[key]["claimed_by"] == claimer for key in left_sending)
    taken = set(accepted_per_plan_row(sim)) | {key for key, _ in emailed_plan_rows(sim)}
    assert left_sending & taken, "the provider took at least one of them before the kill"
    assert "queued" in {row["status"] for row in at_kill.values()}, "the kill left rows to send"
    return at_kill, left_sending


def test_a_dispatcher_killed_mid_batch_then_restarted_sends_nothing_twice(sim, database, reference):
    url = database.url
    at_kill, left_sending = _kill_mid_batch(sim, url, "killed")
    taken_before = accepted_per_plan_row(sim)

    # the next run, past the lease: the interrupted rows become unknown, the rest is sent
    later = AS_OF + SETTINGS.lease + timedelta(minutes=1)
    summary = dispatch_due(STAGE, later, database_url=url, claimer="restarted", settings=SETTINGS)
    assert summary.leases_expired == len(left_sending)
    stored = assert_each_sent_once(sim, url)
    unknown = {key for key, row in stored.items() if row["status"] == "unknown"}
    assert unknown == left_sending
    for key in left_sending:
        row = stored[key]
        assert row["claimed_by"] == "killed" and row["sent_at"] is None
        assert "not re-sent" in row["error"]
    for key, n in taken_before.items():
        assert accepted_per_plan_row(sim)[key] == n, f"{key} sent again after the restart"
    # what the killed dispatcher left queued, the restarted one decided, as one dispatcher would
    queued_at_kill = {key for key, row in at_kill.items() if row["status"] == "queued"}
    for key in queued_at_kill:
        assert stored[key]["status"] != "sending", stored[key]
        if stored[key]["status"] == "queued":  # deferred (as one dispatcher alone defers it)
            assert stored[key]["due_at"] > later and reference[key] == "queued", stored[key]
        if stored[key]["status"] == "sent":
            assert stored[key]["claimed_by"] == "restarted"
    for key, status in reference.items():
        if key not in left_sending and status == "sent":
            assert stored[key]["status"] == "sent", stored[key]
    assert summary.counts["sent"] == sum(
        1 for row in stored.values() if row["status"] == "sent" and row["claimed_by"] == "restarted"
    )

    # a run later still sends none of them either (nor the ones claimed and never sent)
    taken = accepted_per_plan_row(sim) + Counter(key for key, _ in emailed_plan_rows(sim))
    dispatch_due(STAGE, later + timedelta(hours=1), database_url=url, claimer="later", settings=SETTINGS)
    assert_each_sent_once(sim, url)
    again = accepted_per_plan_row(sim) + Counter(key for key, _ in emailed_plan_rows(sim))
    assert {key: again[key] for key in left_sending} == {key: taken[key] for key in left_sending}

    # Meta's status callbacks settle an unknown WhatsApp row: matched on the echoed plan_key
    from fastapi.testclient import TestClient

    from cart_recovery.webhooks.app import create_app
    from cart_recovery.webhooks.config import WebhookConfig

    messages = {m.callback_data: m for m in sim.whatsapp.messages()}
    settle = sorted(key for key in left_sending if key in messages)
    assert settle, "an interrupted WhatsApp row to settle"
    key = settle[0]
    sent_at, delivered_at = later + timedelta(seconds=1), later + timedelta(seconds=40)
    with TestClient(create_app(WebhookConfig.from_env(database_url=url))) as client:
        post_status(client, sim, messages[key].id, "sent", sent_at)
        post_status(client, sim, messages[key].id, "delivered", delivered_at)
    row = outbox(url, STAGE)[key]
    assert (row["status"], row["provider_message_id"]) == ("delivered", messages[key].id)
    assert (row["sent_at"], row["delivered_at"]) == (sent_at, delivered_at)
    assert_each_sent_once(sim, url)


# -- a task retried after the send -----------------------------------------------------------------


def test_a_task_retried_after_its_send_sends_nothing(sim, database, reference):
    url = database.url
    first = dispatch_due(STAGE, AS_OF, database_url=url, claimer=task_claimer(1), settings=SETTINGS)
    assert first.counts["sent"] > 0
    before = outbox(url, STAGE)
    taken = len(sim.whatsapp.messages()), len(sim.smtp.messages)

    # the task failed after the send (its XCom, the worker's heartbeat...): Airflow runs it again
    # with the same trigger event, so the same moment, and a new try number
    retry = dispatch_due(STAGE, AS_OF, database_url=url, claimer=task_claimer(2), settings=SETTINGS)
    assert (retry.enqueued, retry.claimed, dict(retry.counts)) == (0, 0, {})
    assert (len(sim.whatsapp.messages()), len(sim.smtp.messages)) == taken
    assert outbox(url, STAGE) == before
    assert_each_sent_once(sim, url)
    assert _statuses(url) == reference


def test_a_task_killed_mid_batch_and_retried_at_the_same_moment_sends_the_rest_once(sim, database, reference):
    url = database.url
    _at_kill, left_sending = _kill_mid_batch(sim, url, task_claimer(1))

    # Airflow retries the task with the same event: same moment, the lease not over
    retry = dispatch_due(STAGE, AS_OF, database_url=url, claimer=task_claimer(2), settings=SETTINGS)
    assert retry.leases_expired == 0
    stored = assert_each_sent_once(sim, url)
    assert {key for key, row in stored.items() if row["status"] == "sending"} == left_sending
    for key, status in reference.items():
        if key not in left_sending:
            assert stored[key]["status"] == status, stored[key]

    # the stage's next run, past the lease, turns them unknown and sends none of them
    later = AS_OF + SETTINGS.lease + timedelta(minutes=1)
    nxt = dispatch_due(STAGE, later, database_url=url, claimer="next-run", settings=SETTINGS)
    assert nxt.leases_expired == len(left_sending)
    stored = assert_each_sent_once(sim, url)
    assert {key for key, row in stored.items() if row["status"] == "unknown"} == left_sending
