"""WhatsApp (Meta) webhooks: the verification handshake, sha256= signatures, one row per message
and per status update, duplicates stored once."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from webhook_helpers import (
    WHATSAPP_APP_SECRET,
    WHATSAPP_VERIFY_TOKEN,
    dumps,
    fetch,
    hex_hmac,
    whatsapp_batch,
)


def _post(client, body: bytes, *, signature: str | None = None, content_type: str = "application/json"):
    return client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={
            "Content-Type": content_type,
            "X-Hub-Signature-256": hex_hmac(WHATSAPP_APP_SECRET, body) if signature is None else signature,
        },
    )


def _rows(db, *delivery_ids: str) -> list[tuple]:
    return fetch(
        db,
        "select topic, delivery_id, payload from raw.webhook_events "
        "where platform = 'whatsapp' and shop_id = '' and split_part(delivery_id, ':', 1) = any(%s) "
        "order by delivery_id",
        list(delivery_ids),
    )


def _wamid() -> str:
    return f"wamid.{uuid.uuid4().hex}"


def test_handshake_echoes_the_challenge(client):
    answer = client.get(
        "/webhooks/whatsapp",
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": WHATSAPP_VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert answer.status_code == 200 and answer.text == "1158201444"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": WHATSAPP_VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.challenge": "1"},
    ],
)
def test_handshake_refuses_a_wrong_token(client, params):
    answer = client.get("/webhooks/whatsapp", params=params)
    assert answer.status_code == 403 and answer.text != "1"


def test_batch_with_several_messages_and_statuses(client, db):
    first, second, sent = _wamid(), _wamid(), _wamid()
    body = dumps(
        whatsapp_batch(
            messages=[
                (first, "905551234567", "Merhaba, kargo ücreti ne kadar?"),
                (second, "905551234567", "DUR"),
            ],
            statuses=[(sent, "delivered", "905559876543"), (sent, "read", "905559876543")],
        )
    )
    answer = _post(client, body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "stored", "deliveries": 4, "stored": 4}
    rows = _rows(db, first, second, sent)
    assert sorted((r[0], r[1]) for r in rows) == sorted(
        [
            ("messages", first),
            ("messages", second),
            ("statuses", f"{sent}:delivered"),
            ("statuses", f"{sent}:read"),
        ]
    )
    for topic, delivery_id, payload in rows:
        value = payload["entry"][0]["changes"][0]["value"]
        assert payload["object"] == "whatsapp_business_account"
        assert len(value[topic]) == 1 and value[topic][0]["id"] == delivery_id.split(":")[0]
        assert value["metadata"]["phone_number_id"] == "1234567890"

    # Meta retries, batching differently: nothing new.
    again = _post(client, dumps(whatsapp_batch(messages=[(second, "905551234567", "DUR")])))
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(_rows(db, first, second, sent)) == 4


def test_batch_with_a_new_and_a_known_message(client, db):
    known, new = _wamid(), _wamid()
    assert _post(client, dumps(whatsapp_batch(messages=[(known, "905551234567", "a")]))).status_code == 200
    answer = _post(
        client, dumps(whatsapp_batch(messages=[(known, "905551234567", "a"), (new, "905551234567", "b")]))
    )
    assert answer.json() == {"status": "stored", "deliveries": 2, "stored": 1}
    assert len(_rows(db, known, new)) == 2


def test_change_without_messages_is_stored_whole(client, db):
    body = dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "WABA",
                    "changes": [
                        {
                            "field": "account_update",
                            "value": {"event": "VERIFIED_ACCOUNT", "nonce": uuid.uuid4().hex},
                        }
                    ],
                }
            ],
        }
    )
    for _ in range(2):
        assert _post(client, body).status_code == 200
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    rows = fetch(
        db, "select topic from raw.webhook_events where platform = 'whatsapp' and delivery_id = %s", digest
    )
    assert rows == [("account_update",)]


@pytest.mark.parametrize("signature", ["", "sha256=00", "sha1=abc", "sha256=" + "0" * 64, "other-secret"])
def test_bad_signature_401(client, db, signature):
    wamid = _wamid()
    body = dumps(whatsapp_batch(messages=[(wamid, "905551234567", "hi")]))
    if signature == "other-secret":
        signature = hex_hmac("not-the-app-secret", body)
    assert _post(client, body, signature=signature).status_code == 401
    assert _rows(db, wamid) == []


def test_bad_input_matrix(client, db):
    wamid = _wamid()
    body = dumps(whatsapp_batch(messages=[(wamid, "905551234567", "x" * (1024 * 1024))]))
    assert _post(client, body).status_code == 413
    small = dumps(whatsapp_batch(messages=[(wamid, "905551234567", "hi")]))
    assert _post(client, small, content_type="text/plain").status_code == 415
    broken = small[:-1]
    assert _post(client, broken).status_code == 400
    assert _rows(db, wamid) == []


def test_not_configured_refuses(shops, database, db, monkeypatch):
    from fastapi.testclient import TestClient

    from cart_recovery.webhooks.app import create_app
    from cart_recovery.webhooks.config import WebhookConfig

    monkeypatch.delenv("AIRFLOW_CONN_WHATSAPP_DEFAULT")
    with TestClient(create_app(WebhookConfig.from_env(database_url=database.url))) as client:
        assert (
            client.get(
                "/webhooks/whatsapp",
                params={"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
            ).status_code
            == 403
        )
        assert _post(client, dumps(whatsapp_batch(messages=[(_wamid(), "1", "x")]))).status_code == 401
