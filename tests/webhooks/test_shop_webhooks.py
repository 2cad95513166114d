"""Shop webhooks end to end against the test warehouse: stored once, committed before the 2xx,
and the bad-input matrix (401/400/413/415) storing nothing."""

from __future__ import annotations

import json
import uuid

import pytest
from webhook_helpers import (
    b64_hmac,
    dumps,
    fetch,
    ideasoft_cart,
    shop_headers,
    shopify_checkout,
    woocommerce_cart,
)

CASES = {
    "shopify": ("checkouts/update", shopify_checkout),
    "woocommerce": ("cart.updated", woocommerce_cart),
    "ideasoft": ("abandoned_cart/updated", ideasoft_cart),
}


def _send(
    client,
    shops,
    platform,
    body: bytes,
    *,
    delivery_id=None,
    topic=None,
    headers=None,
    content_type="application/json",
):
    shop = getattr(shops, platform)
    all_headers = {
        "Content-Type": content_type,
        **shop_headers(
            platform,
            domain=shop.domain,
            secret=shop.secret,
            body=body,
            topic=topic or CASES[platform][0],
            delivery_id=delivery_id or str(uuid.uuid4()),
        ),
    }
    all_headers.update(headers or {})
    return client.post(f"/webhooks/{platform}", content=body, headers=all_headers)


def _stored(db, shops) -> list[tuple]:
    return fetch(
        db,
        "select platform, shop_id, topic, delivery_id, payload from raw.webhook_events "
        "where shop_id = any(%s) order by event_id",
        shops.ids,
    )


@pytest.mark.parametrize("platform", list(CASES))
def test_each_platform_stores_the_event(client, shops, db, platform):
    topic, make = CASES[platform]
    document = make()
    body = dumps(document)
    answer = _send(client, shops, platform, body, delivery_id="delivery-1")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "stored", "delivery_id": "delivery-1"}
    rows = _stored(db, shops)
    assert rows == [(platform, getattr(shops, platform).id, topic, "delivery-1", document)]
    received = fetch(
        db, "select received_at from raw.webhook_events where shop_id = %s", getattr(shops, platform).id
    )
    assert received[0][0] is not None


@pytest.mark.parametrize("platform", list(CASES))
def test_duplicate_delivery_stored_once(client, shops, db, platform):
    body = dumps(CASES[platform][1]())
    first = _send(client, shops, platform, body, delivery_id="same-id")
    again = _send(client, shops, platform, body, delivery_id="same-id")
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["status"] == "duplicate"
    assert len(_stored(db, shops)) == 1


def test_delivery_id_defaults_to_body_digest(client, shops, db):
    body = dumps(shopify_checkout())
    shop = shops.shopify
    headers = shop_headers(
        "shopify", domain=shop.domain, secret=shop.secret, body=body, topic="checkouts/create", delivery_id=""
    )
    del headers["X-Shopify-Webhook-Id"]
    for _ in range(2):
        answer = client.post(
            "/webhooks/shopify", content=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert answer.status_code == 200
    rows = _stored(db, shops)
    assert len(rows) == 1 and rows[0][3].startswith("sha256:")


def test_woocommerce_source_url_matches_the_domain(client, shops, db):
    body = dumps(woocommerce_cart())
    answer = _send(
        client,
        shops,
        "woocommerce",
        body,
        headers={"X-WC-Webhook-Source": f"HTTPS://{shops.woocommerce.domain.upper()}/shop/"},
    )
    assert answer.status_code == 200


def test_woocommerce_ping_is_answered_and_not_stored(client, shops, db):
    answer = client.post(
        "/webhooks/woocommerce",
        content=b"webhook_id=12",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200 and answer.json() == {"status": "ping"}
    assert _stored(db, shops) == []


def test_charset_in_content_type_is_fine(client, shops, db):
    answer = _send(
        client, shops, "shopify", dumps(shopify_checkout()), content_type="application/json; charset=utf-8"
    )
    assert answer.status_code == 200


# -- the bad-input matrix: nothing stored for any of them ------------------------------------


def test_unknown_shop_401(client, shops, db):
    body = dumps(shopify_checkout())
    answer = _send(
        client, shops, "shopify", body, headers={"X-Shopify-Shop-Domain": "stranger.myshopify.com"}
    )
    assert answer.status_code == 401
    answer = _send(
        client,
        shops,
        "woocommerce",
        dumps(woocommerce_cart()),
        headers={"X-WC-Webhook-Source": "https://stranger.example.com/"},
    )
    assert answer.status_code == 401
    assert _stored(db, shops) == []


def test_shop_of_another_platform_401(client, shops, db):
    # The Shopify shop's domain sent to the WooCommerce route is not a WooCommerce shop.
    answer = _send(
        client,
        shops,
        "woocommerce",
        dumps(woocommerce_cart()),
        headers={"X-WC-Webhook-Source": f"https://{shops.shopify.domain}/"},
    )
    assert answer.status_code == 401
    assert _stored(db, shops) == []


@pytest.mark.parametrize("platform", list(CASES))
@pytest.mark.parametrize("signature", ["wrong", "", "another-shop"])
def test_bad_signature_401(client, shops, db, platform, signature):
    body = dumps(CASES[platform][1]())
    header = {
        "shopify": "X-Shopify-Hmac-Sha256",
        "woocommerce": "X-WC-Webhook-Signature",
        "ideasoft": "X-Ideasoft-Hmac-Sha256",
    }[platform]
    value = b64_hmac("someone-elses-secret", body) if signature == "another-shop" else signature
    answer = _send(client, shops, platform, body, headers={header: value})
    assert answer.status_code == 401
    assert _stored(db, shops) == []


def test_signature_over_a_different_body_401(client, shops, db):
    body = dumps(shopify_checkout())
    shop = shops.shopify
    headers = shop_headers(
        "shopify",
        domain=shop.domain,
        secret=shop.secret,
        body=body,
        topic="checkouts/update",
        delivery_id="x",
    )
    tampered = body.replace(b"899.90", b"  1.00")
    answer = client.post(
        "/webhooks/shopify", content=tampered, headers={**headers, "Content-Type": "application/json"}
    )
    assert answer.status_code == 401
    assert _stored(db, shops) == []


@pytest.mark.parametrize(
    "body", [b"{not json", b"", b"[1, 2]", b'"text"', b'{"a": NaN}', b"\xff\xfe{}", b'{"note": "\\u0000"}']
)
def test_malformed_json_400(client, shops, db, body):
    answer = _send(client, shops, "shopify", body)  # correctly signed, so only the JSON is wrong
    assert answer.status_code == 400, answer.text
    assert _stored(db, shops) == []


def test_missing_topic_400(client, shops, db):
    answer = _send(client, shops, "shopify", dumps(shopify_checkout()), headers={"X-Shopify-Topic": ""})
    assert answer.status_code == 400
    assert _stored(db, shops) == []


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "", "application/xml"]
)
def test_wrong_content_type_415(client, shops, db, content_type):
    for platform in CASES:
        answer = _send(client, shops, platform, dumps(CASES[platform][1]()), content_type=content_type)
        assert answer.status_code == 415, (platform, content_type)
    assert _stored(db, shops) == []


def _big_checkout(size: int) -> bytes:
    document = shopify_checkout()
    document["note"] = "x" * size
    return dumps(document)


def test_oversize_by_content_length_413(client, shops, db):
    body = _big_checkout(1024 * 1024)
    answer = _send(client, shops, "shopify", body)
    assert answer.status_code == 413
    assert _stored(db, shops) == []


def test_oversize_without_content_length_413(client, shops, db):
    """A chunked body (no Content-Length) is counted while it is read."""
    body = _big_checkout(1024 * 1024)
    shop = shops.shopify
    headers = shop_headers(
        "shopify",
        domain=shop.domain,
        secret=shop.secret,
        body=body,
        topic="checkouts/update",
        delivery_id="big",
    )

    def chunks():
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    answer = client.post(
        "/webhooks/shopify", content=chunks(), headers={**headers, "Content-Type": "application/json"}
    )
    assert answer.status_code == 413
    assert _stored(db, shops) == []


def test_lying_content_length_is_not_trusted(config, shops, db):
    """Content-Length claims a small body but more bytes arrive: counted while read, 413."""
    import asyncio

    from cart_recovery.webhooks.app import create_app

    app = create_app(config)
    body = _big_checkout(2 * 1024 * 1024)
    shop = shops.shopify
    headers = shop_headers(
        "shopify",
        domain=shop.domain,
        secret=shop.secret,
        body=body,
        topic="checkouts/update",
        delivery_id="liar",
    )
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw_headers += [(b"content-type", b"application/json"), (b"content-length", b"100")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhooks/shopify",
        "raw_path": b"/webhooks/shopify",
        "query_string": b"",
        "headers": raw_headers,
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    sent: list[dict] = []

    async def receive():
        if pieces:
            return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert _stored(db, shops) == []


def test_max_bytes_is_configurable(shops, database, db, monkeypatch):
    from fastapi.testclient import TestClient

    from cart_recovery.webhooks.app import create_app
    from cart_recovery.webhooks.config import WebhookConfig

    monkeypatch.setenv("CART_RECOVERY_WEBHOOK_MAX_BYTES", "2000")
    with TestClient(create_app(WebhookConfig.from_env(database_url=database.url))) as small:
        assert _send(small, shops, "shopify", dumps(shopify_checkout())).status_code == 200
        assert _send(small, shops, "shopify", _big_checkout(2000)).status_code == 413
    assert len(_stored(db, shops)) == 1


def test_body_stored_verbatim_as_json(client, shops, db):
    document = shopify_checkout()
    document["customer"]["first_name"] = "Çağla 🌷"
    body = json.dumps(document, ensure_ascii=True).encode()
    assert _send(client, shops, "shopify", body).status_code == 200
    assert _stored(db, shops)[0][4]["customer"]["first_name"] == "Çağla 🌷"


def test_the_events_phone_numbers_are_stored_read_in_the_shops_country(client, shops, db):
    """With the event, in the same statement: the E.164 form of every phone number in it, read in
    the shop's country (TR here), for the models and the guards to match people by."""
    checkout = shopify_checkout(phone="0532 123 45 67")
    checkout["customer"]["phone"] = "+90 532 123 45 67"
    checkout["billing_address"]["phone"] = "123"
    assert _send(client, shops, "shopify", dumps(checkout)).status_code == 200
    assert _send(client, shops, "woocommerce", dumps(woocommerce_cart())).status_code == 200
    rows = fetch(
        db, "select shop_id, raw, country, e164 from ops.phone_numbers where shop_id = any(%s)", shops.ids
    )
    assert sorted(rows) == sorted(
        [
            (shops.shopify.id, "0532 123 45 67", "TR", "+905321234567"),
            (shops.shopify.id, "+90 532 123 45 67", "TR", "+905321234567"),
            (shops.shopify.id, "123", "TR", None),
            (shops.woocommerce.id, "+447700900123", "TR", "+447700900123"),
        ]
    )
