"""Custom triggers of the cart-recovery project (the triggerer loads them from ``plugins/``).

- ``WebhookEventsTrigger``: the Asset watcher that starts ``cart_transform`` on new webhooks;
- ``DuePlanTrigger``: what the stage DAGs' ``wait_for_due`` sensor defers to (below).

``WebhookEventsTrigger`` watches ``raw.webhook_events`` for the Asset
``cart-recovery://warehouse/raw/webhook_events``: when a shop webhook lands that the last
``cart_transform`` build has not seen, it fires an Asset event, and ``cart_transform`` (scheduled
on that Asset or the polled raw Asset) runs. So a cart that arrives by webhook is planned without
waiting for the next poll. The query lives in ``cart_recovery.transform``; this is the wiring.

Limits, by design: which events were fired for is kept in memory, so a restarted triggerer fires
once more for the newest unbuilt event (one extra build, harmless); an event that commits after
a newer one has already fired waits for the next event or the next ``cart_ingest`` (at most one
poll interval); ``received_at`` (the webhook service's clock) is compared with the build's
``as_of`` (the scheduler's), so the two hosts' clocks should be synchronised (NTP).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

log = logging.getLogger(__name__)


class WebhookEventsTrigger(BaseEventTrigger):
    """Fires once per batch of shop webhooks that landed after the last transform build."""

    def __init__(self, poll_interval: float = 15.0, conn_id: str = "cart_recovery_warehouse") -> None:
        super().__init__()
        self.poll_interval = poll_interval
        self.conn_id = conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "cart_recovery_triggers.WebhookEventsTrigger",
            {"poll_interval": self.poll_interval, "conn_id": self.conn_id},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from cart_recovery.connections import get_connection
        from cart_recovery.transform import unbuilt_webhook_event

        conn_url: str | None = None
        last_fired: int | None = None
        while True:
            try:
                if conn_url is None:
                    conn_url = (
                        get_connection(self.conn_id).get_uri().replace("postgres://", "postgresql://", 1)
                    )
                found = await unbuilt_webhook_event(conn_url, last_fired)
            except Exception as exc:  # a missing connection or a restarting warehouse must not end the watch
                log.warning("webhook watch: %s; trying again in %s s", exc, self.poll_interval)
                found = None
            if found is not None:
                last_fired, received_at = found
                yield TriggerEvent({"event_id": last_fired, "received_at": received_at.isoformat()})
            await asyncio.sleep(self.poll_interval)


class DuePlanTrigger(BaseTrigger):
    """Waits, without a worker slot, until rows of one recovery stage fall due.

    It asks the warehouse for the stage's next due moment (``cart_recovery.dispatch.schedule``)
    (or the end of the lease of a row a killed dispatcher left ``sending``: the run it starts
    turns that row ``unknown``) and sleeps until then, but never longer than ``poll_interval``, so
    a new plan (a ``cart_transform`` build) with an earlier row is seen within that interval. It fires
    ``{"status": "due", "now": ...}`` when something is due, or ``{"status": "idle"}`` once
    ``timeout`` seconds passed with nothing due. With ``as_of`` (a replay) it checks once, at
    that moment, and answers at once.
    """

    def __init__(
        self,
        stage: int,
        conn_id: str = "cart_recovery_warehouse",
        poll_interval: float = 10.0,
        timeout: float = 3600.0,
        lookback_seconds: float = 7 * 24 * 3600.0,
        as_of: str | None = None,
        lease_seconds: float | None = None,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.lookback_seconds = lookback_seconds
        self.as_of = as_of
        # the dispatcher's lease: the stage also wakes when a row left `sending` passes it (None,
        # as in a trigger serialized before this existed: it does not)
        self.lease_seconds = lease_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "cart_recovery_triggers.DuePlanTrigger",
            {
                "stage": self.stage,
                "conn_id": self.conn_id,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "lookback_seconds": self.lookback_seconds,
                "as_of": self.as_of,
                "lease_seconds": self.lease_seconds,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from datetime import UTC, datetime, timedelta

        from cart_recovery.connections import get_connection
        from cart_recovery.dispatch.schedule import next_due

        lookback = timedelta(seconds=self.lookback_seconds)
        lease = timedelta(seconds=self.lease_seconds) if self.lease_seconds is not None else None
        started = datetime.now(UTC)  # the trigger is the dispatcher's clock
        conn_url: str | None = None
        while True:
            now = datetime.fromisoformat(self.as_of) if self.as_of else datetime.now(UTC)
            if now.tzinfo is None:
                now = now.replace(tzinfo=UTC)  # a replay moment without an offset is UTC
            due: datetime | None = None
            try:
                if conn_url is None:
                    conn_url = (
                        get_connection(self.conn_id).get_uri().replace("postgres://", "postgresql://", 1)
                    )
                due = await next_due(conn_url, self.stage, now, lookback, lease)
            except Exception as exc:  # a restarting warehouse must not fail the wait
                log.warning("stage %s: %s; trying again in %s s", self.stage, exc, self.poll_interval)
            if due is not None and due <= now:
                yield TriggerEvent(
                    {"status": "due", "stage": self.stage, "now": now.isoformat(), "due_at": due.isoformat()}
                )
                return
            if self.as_of or (now - started).total_seconds() >= self.timeout:
                yield TriggerEvent(
                    {
                        "status": "idle",
                        "stage": self.stage,
                        "now": now.isoformat(),
                        "next_due_at": due.isoformat() if due else None,
                    }
                )
                return
            wait = self.poll_interval
            if due is not None:
                wait = min(wait, max((due - now).total_seconds(), 0.0))
            await asyncio.sleep(max(wait, 0.05))
