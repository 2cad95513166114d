"""Custom triggers of the cart-recovery project (the triggerer loads them from ``plugins/``).

``WebhookEventsTrigger`` watches ``raw.webhook_events`` for the Asset
``cart-recovery://warehouse/raw/webhook_events``: when a shop webhook lands that the last
``cart_transform`` build has not seen, it fires an Asset event, and ``cart_transform`` (scheduled
on that Asset or the polled raw Asset) runs. So a cart that arrives by webhook is planned without
waiting for the next poll. The query lives in ``cart_recovery.transform``; this is the wiring.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

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

        conn_url = get_connection(self.conn_id).get_uri().replace("postgres://", "postgresql://", 1)
        last_fired: int | None = None
        while True:
            try:
                found = await unbuilt_webhook_event(conn_url, last_fired)
            except Exception as exc:  # the warehouse restarting must not end the watch
                log.warning("webhook watch: the warehouse did not answer (%s); retrying", exc)
                found = None
            if found is not None:
                last_fired, received_at = found
                yield TriggerEvent({"event_id": last_fired, "received_at": received_at.isoformat()})
            await asyncio.sleep(self.poll_interval)
