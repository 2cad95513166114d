"""The database unreachable or restarted: 503 with Retry-After and nothing stored, then the
service recovers by itself (broken pooled connections are discarded, not reused)."""

from __future__ import annotations

import socket
import uuid

from fastapi.testclient import TestClient
from webhook_helpers import fetch, signed_shopify_checkout

from cart_recovery.webhooks.app import create_app
from cart_recovery.webhooks.config import WebhookConfig


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the socket is


def _send(client, shops, delivery_id: str, topic: str = "checkouts/update"):
    body, headers = signed_shopify_checkout(shops, delivery_id, topic=topic)
    return client.post("/webhooks/shopify", content=body, headers=headers)


def test_database_down_answers_503(shops, db):
    config = WebhookConfig.from_env(database_url=f"postgresql://postgres@127.0.0.1:{_closed_port()}/nowhere")
    with TestClient(create_app(config)) as client:  # starts although the database is down
        answer = _send(client, shops, "while-down")
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "5"
        assert _send(client, shops, "privacy-while-down", topic="customers/redact").status_code == 503
        assert client.get("/healthz").json() == {"status": "ok", "database": "unavailable"}
    assert fetch(db, "select count(*) from raw.webhook_events where shop_id = %s", shops.shopify.id) == [(0,)]
    assert fetch(db, "select count(*) from ops.privacy_requests where shop_id = %s", shops.shopify.id) == [
        (0,)
    ]


def test_killed_connections_are_replaced(client, shops, db):
    """Every pooled connection terminated (as after a database restart): the next requests succeed."""
    for i in range(5):
        assert _send(client, shops, f"before-{i}").status_code == 200
    fetch(
        db,
        "select pg_terminate_backend(pid) from pg_stat_activity "
        "where application_name = 'cart-recovery-webhooks' and pid <> pg_backend_pid()",
    )
    for i in range(5):
        answer = _send(client, shops, f"after-{i}")
        assert answer.status_code == 200, answer.text
    assert fetch(db, "select count(*) from raw.webhook_events where shop_id = %s", shops.shopify.id) == [
        (10,)
    ]
    assert client.get("/healthz").json()["database"] == "ok"


def test_nothing_half_written_when_the_transaction_fails(client, shops, db, monkeypatch):
    """A privacy request's event and its ops row commit together or not at all."""
    from cart_recovery import privacy

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom after the event insert")

    monkeypatch.setattr(privacy, "record_request", broken)
    client_no_raise = TestClient(client.app, raise_server_exceptions=False)
    answer = _send(client_no_raise, shops, f"half-{uuid.uuid4()}", topic="customers/redact")
    assert answer.status_code == 500
    assert fetch(db, "select count(*) from raw.webhook_events where shop_id = %s", shops.shopify.id) == [(0,)]
