"""The shop simulator: reproducible data and each fake speaking its platform's wire format."""

from __future__ import annotations

import json

import httpx
import pytest

from cart_recovery.simulator.data import default_shops, generate_shop
from cart_recovery.simulator.shopify_api import API_VERSION
from cart_recovery.simulator.webhooks import delivery, send
from cart_recovery.webhooks.signatures import verify_base64


def _snapshot(seed: int) -> list:
    shop = default_shops(seed)[0]
    data = generate_shop(shop, seed=seed, carts=10)
    return [(c.id, c.email, c.phone, str(c.total), c.updated_at) for c in data.carts]


def test_the_same_seed_gives_the_same_shops():
    assert _snapshot(5) == _snapshot(5)
    assert _snapshot(5) != _snapshot(6)


def test_turkish_and_english_shops_with_size_charts():
    shops = {shop.language: shop for shop in default_shops(1)}
    turkish = generate_shop(shops["tr"], seed=1, carts=30)
    english = generate_shop(shops["en"], seed=1, carts=30)
    assert "Keten Gömlek" in {p.title for p in turkish.products}
    assert "Linen Shirt" in {p.title for p in english.products}
    assert any(ch in "çğıöşüİÇĞÖŞÜ" for c in turkish.customers for ch in c.first_name + c.last_name)
    for product in turkish.products:
        assert (product.size_chart is not None) == (product.product_type == "apparel")
        if product.size_chart:
            assert [row["size"] for row in product.size_chart["rows"]] == ["S", "M", "L", "XL"]
    assert all(c.phone is None or c.phone.startswith("+") for c in turkish.customers)


def test_each_api_rejects_wrong_credentials(simulator):
    shopify, woo, ticimax, ideasoft = (
        simulator.url(s) for s in ("anatolia-shopify", "hudson-woo", "kapadokya-ticimax", "ege-ideasoft")
    )
    answer = httpx.post(
        f"{shopify}/admin/api/{API_VERSION}/graphql.json",
        json={"query": "{ shop { name } }"},
        headers={"X-Shopify-Access-Token": "shpat_wrong"},
    )
    assert answer.status_code == 401
    answer = httpx.get(f"{woo}/wp-json/wc/v3/orders", auth=("ck_wrong", "cs_wrong"))
    assert answer.status_code == 401 and answer.json()["code"] == "woocommerce_rest_cannot_view"
    envelope = (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        '<SelectSepet xmlns="http://tempuri.org/"><UyeKodu>wrong</UyeKodu></SelectSepet>'
        "</s:Body></s:Envelope>"
    )
    answer = httpx.post(
        f"{ticimax}/Servis/SiparisServis.svc",
        content=envelope,
        headers={"Content-Type": "text/xml", "SOAPAction": "http://tempuri.org/ISiparisServis/SelectSepet"},
    )
    assert answer.status_code == 500 and "<s:Fault>" in answer.text and "UyeKodu" in answer.text
    answer = httpx.get(f"{ideasoft}/admin-api/abandoned_carts", headers={"Authorization": "Bearer nope"})
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"


def test_woocommerce_pages_carry_totals_headers(simulator):
    shop = simulator.data("hudson-woo").shop
    answer = httpx.get(
        f"{simulator.url(shop.id)}/wp-json/wc/v3/abandoned-carts",
        params={"per_page": 3, "page": 3},
        auth=(shop.api_key, shop.api_secret),
    )
    assert answer.headers["X-WP-Total"] == "8" and answer.headers["X-WP-TotalPages"] == "3"
    assert len(answer.json()) == 2


@pytest.mark.parametrize("shop_id", ["anatolia-shopify", "hudson-woo", "ege-ideasoft"])
def test_webhooks_are_signed_like_the_platform(simulator, shop_id):
    shop = simulator.data(shop_id).shop
    cart = simulator.data(shop_id).carts[0]
    received: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200)

    webhook = delivery(shop, cart, delivery_id="delivery-1")
    with httpx.Client(transport=httpx.MockTransport(receiver)) as client:
        assert send("http://webhooks.test/webhooks/x", webhook, client=client).status_code == 200
    request = received[0]
    prefix = {"shopify": "X-Shopify", "woocommerce": "X-WC-Webhook", "ideasoft": "X-Ideasoft"}[shop.platform]
    signature = request.headers[
        f"{prefix}-Hmac-Sha256" if shop.platform != "woocommerce" else f"{prefix}-Signature"
    ]
    # Checked by the verifier that tests/webhooks/test_signatures.py holds to RFC 4231 and openssl.
    assert verify_base64(shop.webhook_secret, request.content, signature)
    assert not verify_base64(shop.webhook_secret + "x", request.content, signature)
    body = json.loads(request.content)
    if shop.platform == "shopify":
        assert request.headers["X-Shopify-Topic"] == "checkouts/update"
        assert request.headers["X-Shopify-Shop-Domain"] == shop.domain
        assert request.headers["X-Shopify-Webhook-Id"] == "delivery-1"
        assert body["id"] == cart.id and body["token"] == cart.token
    elif shop.platform == "woocommerce":
        assert request.headers["X-WC-Webhook-Topic"] == "cart.updated"
        assert request.headers["X-WC-Webhook-Delivery-ID"] == "delivery-1"
        assert request.headers["X-WC-Webhook-Source"] == f"https://{shop.domain}/"
        assert body["cart_key"] == cart.token
    else:
        assert request.headers["X-Ideasoft-Topic"] == "abandoned_cart/updated"


def test_printed_configuration_loads_as_a_shops_file(simulator, tmp_path):
    from cart_recovery.shops import load_shops

    path = tmp_path / "shops.yaml"
    path.write_text(simulator.shops_yaml())
    shops = load_shops(path)
    assert {s.platform.value for s in shops} == {"shopify", "woocommerce", "ticimax", "ideasoft"}
    env = simulator.connection_env()
    assert all(f"AIRFLOW_CONN_{s.conn_id.upper()}" in env for s in shops)
