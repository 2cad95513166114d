"""WhatsApp Cloud API webhooks: one stored delivery per inbound message and per status update.

Meta batches: one POST may carry several entries, changes, messages and statuses, and a retry may
batch them differently. So a POST is split into single-item envelopes of the same shape
(``{"object", "entry": [{"id", "changes": [{"field", "value": {..., "messages": [one]}}]}]}``),
each stored as its own row with its own delivery id:

- inbound message: its ``wamid.`` id (``messages[].id``), topic ``messages``;
- status update: ``<status id>:<status>`` (sent, delivered, read and failed of one message are
  four deliveries), topic ``statuses``;
- anything else (no messages and no statuses): the whole body, delivery id
  ``sha256:<hex digest of the raw body>``, topic = the change's ``field``.

A newly stored status or message also settles the recovery funnel in the same transaction
(``funnel.py``: the outbox row's status and times, the conversation, STOP and 131050 revocations).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Delivery:
    topic: str
    delivery_id: str
    payload: str  # JSON text


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def split_deliveries(document: dict[str, Any], body: bytes) -> list[Delivery]:
    deliveries: list[Delivery] = []
    fields: list[str] = []
    for entry in _list(document.get("entry")):
        entry = _dict(entry)
        for change in _list(entry.get("changes")):
            change = _dict(change)
            value = _dict(change.get("value"))
            fields.append(str(change.get("field") or "unknown"))
            rest = {k: v for k, v in value.items() if k not in ("messages", "statuses")}

            def envelope(kind: str, item: Any, entry=entry, change=change, rest=rest) -> str:
                return json.dumps(
                    {
                        "object": document.get("object"),
                        "entry": [
                            {
                                "id": entry.get("id"),
                                "changes": [{"field": change.get("field"), "value": {**rest, kind: [item]}}],
                            }
                        ],
                    },
                    ensure_ascii=False,
                    separators=(",", ":"),
                )

            for message in _list(value.get("messages")):
                text = envelope("messages", message)
                message_id = _dict(message).get("id")
                deliveries.append(
                    Delivery("messages", str(message_id) if message_id else _digest(text.encode()), text)
                )
            for status in _list(value.get("statuses")):
                text = envelope("statuses", status)
                status = _dict(status)
                if status.get("id") and status.get("status"):
                    delivery_id = f"{status['id']}:{status['status']}"
                else:
                    delivery_id = _digest(text.encode())
                deliveries.append(Delivery("statuses", delivery_id, text))
    if not deliveries:
        topic = fields[0] if len(set(fields)) == 1 else "unknown"
        deliveries.append(Delivery(topic, _digest(body), body.decode("utf-8")))
    # The same message twice in one POST is one delivery.
    unique = {d.delivery_id: d for d in deliveries}
    return list(unique.values())
