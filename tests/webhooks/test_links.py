"""Signed links (cart_recovery.dispatch.links) and the pages that serve them: ``/r/<token>`` records
a click and redirects to the cart, ``/u/<token>`` unsubscribes from email (GET asks, POST does,
RFC 8058 one-click included). Tokens are also computed here independently of the package."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import uuid
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from test_dispatch_funnel import insert_outbox, outbox, revocations
from webhook_helpers import fetch

from cart_recovery.dispatch import links
from cart_recovery.errors import ConfigurationError
from cart_recovery.webhooks.app import create_app
from cart_recovery.webhooks.config import WebhookConfig

SECRET = "link-secret-for-tests-0123456789abcdef"
PUBLIC_URL = "https://hooks.example.com"


def independent_token(kind: str, plan_key: str, secret: str = SECRET) -> str:
    raw = plan_key.encode()
    mac = hmac.new(secret.encode(), kind.encode() + b"\x00" + raw, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(raw + mac).rstrip(b"=").decode()


@pytest.fixture
def link_env(monkeypatch):
    monkeypatch.setenv(links.SECRET_ENV, SECRET)
    monkeypatch.setenv(links.PUBLIC_URL_ENV, PUBLIC_URL + "/")


@pytest.fixture
def config(link_env, shops, database) -> WebhookConfig:  # the conftest's, with the link settings
    return WebhookConfig.from_env(database_url=database.url)


def _path(url: str) -> str:
    assert url.startswith(PUBLIC_URL + "/")
    return url[len(PUBLIC_URL) :]


# -- tokens --------------------------------------------------------------------------------------------


def test_urls_carry_the_documented_token(link_env):
    plan_key = "anatolia:35012345678:2026-11-20T10:05:00+00:00:2"
    assert links.click_url(plan_key) == f"{PUBLIC_URL}/r/{independent_token('click', plan_key)}"
    assert links.unsubscribe_url(plan_key) == f"{PUBLIC_URL}/u/{independent_token('unsubscribe', plan_key)}"
    assert links.verify("click", independent_token("click", plan_key)) == plan_key
    assert links.verify("unsubscribe", independent_token("unsubscribe", plan_key)) == plan_key


def test_turkish_plan_keys_round_trip(link_env):
    plan_key = "kapadokya:sepet-çğış:1"
    token = _path(links.click_url(plan_key)).removeprefix("/r/")
    assert links.verify("click", token) == plan_key


def test_forged_altered_and_cross_kind_tokens_are_refused(link_env):
    plan_key = f"plan-{uuid.uuid4().hex}"
    click = independent_token("click", plan_key)
    flipped = click[:-2] + ("A" if click[-2] != "A" else "B") + click[-1]
    other_key = independent_token("click", plan_key + "x")[: len(click)]
    for token in (
        independent_token("unsubscribe", plan_key),  # the other kind
        independent_token("click", plan_key, secret="another-secret-0123456789"),
        flipped,
        other_key,
        click + "A",
        click + "=",
        click[:10] + "!" + click[10:],  # base64 decoders skip such characters: not here
        base64.urlsafe_b64encode(plan_key.encode()).decode(),  # no MAC at all
        "",
        "A" * 2000,
    ):
        assert links.verify("click", token) is None, token


def test_one_spelling_per_token(link_env):
    """The last base64 character may carry unused low bits; a decoder ignores them, verify does not."""
    plan_key = "plan-1"  # 6 + 16 bytes: 22 = 3 * 7 + 1, so the last character holds 4 unused bits
    token = independent_token("click", plan_key)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]
    assert base64.urlsafe_b64decode(respelled + "==") == base64.urlsafe_b64decode(token + "==")
    assert links.verify("click", token) == plan_key
    assert links.verify("click", respelled) is None


def test_verify_checks_the_kind(link_env):
    with pytest.raises(ValueError, match="link kind must be one of click, unsubscribe"):
        links.verify("open", "abc")
    with pytest.raises(ValueError, match="needs a plan_key"):
        links.click_url("")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({links.PUBLIC_URL_ENV: PUBLIC_URL}, "CART_RECOVERY_LINK_SECRET is not set"),
        (
            {links.SECRET_ENV: "short", links.PUBLIC_URL_ENV: PUBLIC_URL},
            "CART_RECOVERY_LINK_SECRET is too short",
        ),
        ({links.SECRET_ENV: SECRET}, "CART_RECOVERY_PUBLIC_URL is not set: set it to the webhook service"),
        ({links.SECRET_ENV: SECRET, links.PUBLIC_URL_ENV: "hooks.example.com"}, "absolute http"),
        ({links.SECRET_ENV: SECRET, links.PUBLIC_URL_ENV: "https://h.example.com/?a=1"}, "without query"),
    ],
)
def test_missing_or_bad_settings_say_what_to_set(monkeypatch, env, message):
    monkeypatch.delenv(links.SECRET_ENV, raising=False)
    monkeypatch.delenv(links.PUBLIC_URL_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for call in (
        lambda: links.click_url("p"),
        lambda: links.unsubscribe_url("p"),
        lambda: links.verify("click", "x"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            call()


# -- /r/<token> ----------------------------------------------------------------------------------------


def test_click_redirects_to_the_cart_and_the_first_click_wins(client, db):
    cart_url = f"https://anatolia.myshopify.com/checkouts/{uuid.uuid4().hex}/recover?key=abc"
    plan_key = insert_outbox(db, cart_url=cart_url)
    path = _path(links.click_url(plan_key))
    before = datetime.now(UTC)
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 302
    assert answer.headers["location"] == cart_url
    assert answer.headers["cache-control"] == "no-store"
    first = outbox(db, plan_key)["clicked_at"]
    assert first is not None and first >= before

    again = client.get(path, follow_redirects=False)
    assert again.status_code == 302 and again.headers["location"] == cart_url
    assert outbox(db, plan_key)["clicked_at"] == first


def test_previews_and_head_redirect_without_counting(client, db):
    plan_key = insert_outbox(db)
    path = _path(links.click_url(plan_key))
    preview = client.get(
        path,
        headers={"User-Agent": "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"},
        follow_redirects=False,
    )
    assert preview.status_code == 302
    assert (
        client.get(path, headers={"User-Agent": "WhatsApp/2.23.20.0"}, follow_redirects=False).status_code
        == 302
    )
    assert client.head(path, follow_redirects=False).status_code == 302
    assert outbox(db, plan_key)["clicked_at"] is None
    browser = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
    assert client.get(path, headers={"User-Agent": browser}, follow_redirects=False).status_code == 302
    assert outbox(db, plan_key)["clicked_at"] is not None


def test_forged_or_useless_click_tokens_answer_404(client, db):
    plan_key = insert_outbox(db)
    no_cart = insert_outbox(db, cart_url=None)
    script = insert_outbox(db, cart_url="javascript:alert(1)")
    for path in (
        "/r/" + independent_token("click", plan_key, secret="a-forger-guessed-this-secret"),
        "/r/" + independent_token("unsubscribe", plan_key),  # an unsubscribe token is no click token
        "/r/" + independent_token("click", f"plan-{uuid.uuid4().hex}"),  # genuine, but no such row
        "/r/" + independent_token("click", no_cart),
        "/r/" + independent_token("click", script),
        "/r/not-base64-%21%21",
    ):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 404, path
        assert "location" not in answer.headers
        assert answer.json() == {"detail": "not found"}  # one answer for every reason
    for key in (plan_key, no_cart, script):
        assert outbox(db, key)["clicked_at"] is None


# -- /u/<token> ----------------------------------------------------------------------------------------


def _email_row(
    db, *, language: str = "en", shop_id: str = "anatolia", address: str | None = None
) -> tuple[str, str]:
    address = address or f"Ayse.{uuid.uuid4().hex[:8]}@Example.com"
    plan_key = insert_outbox(
        db, channel="email", recipient=address, provider_message_id=None, language=language, shop_id=shop_id
    )
    return plan_key, address.lower()


def test_unsubscribe_get_asks_and_does_not_revoke(client, db):
    plan_key, address = _email_row(db)
    answer = client.get(_path(links.unsubscribe_url(plan_key)))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["cache-control"] == "no-store"
    page = answer.text
    assert address in page
    assert '<form method="post">' in page and 'name="List-Unsubscribe" value="One-Click"' in page
    assert revocations(db, address) == []


def test_unsubscribe_post_revokes_once_and_says_so(client, db, shops):
    plan_key, address = _email_row(db, shop_id=shops.shopify.id)
    path = _path(links.unsubscribe_url(plan_key))
    before = datetime.now(UTC)
    answer = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    assert (
        f"Done: {address} will receive no more cart reminder emails from {shops.shopify.domain}."
        in answer.text
    )
    [(channel, revoked_address, shop_id, source, revoked_at, detail)] = revocations(db, address)
    assert (channel, revoked_address, shop_id, source) == (
        "email",
        address,
        shops.shopify.id,
        "email_unsubscribe",
    )
    assert revoked_at >= before and detail == {"plan_key": plan_key}

    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert len(revocations(db, address)) == 1  # idempotent
    assert "is already unsubscribed" in client.get(path).text  # no second form


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_rfc8058_one_click_post(client, db, encoding):
    plan_key, address = _email_row(db)
    path = _path(links.unsubscribe_url(plan_key))
    if encoding == "urlencoded":
        answer = client.post(
            path,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    else:
        answer = client.post(path, files={"List-Unsubscribe": (None, "One-Click")})
    assert answer.status_code == 200
    assert [r[3] for r in revocations(db, address)] == ["email_unsubscribe"]


def test_unsubscribe_page_is_escaped_and_in_the_customers_language(client, db):
    tricky = f"<b>ayse</b>{uuid.uuid4().hex[:6]}@example.com"
    plan_key, address = _email_row(db, language="tr", address=tricky)
    page = client.get(_path(links.unsubscribe_url(plan_key))).text
    assert "<b>" not in page
    assert "&lt;b&gt;ayse&lt;/b&gt;" in page
    assert '<html lang="tr">' in page and "Abonelikten çık" in page
    done = client.post(_path(links.unsubscribe_url(plan_key))).text
    assert "artık sepet hatırlatma e-postası" in done and "<b>" not in done
    assert [r[1] for r in revocations(db, address)] == [address]


def test_unsubscribe_refuses_forged_tokens_and_non_email_rows(client, db):
    plan_key, address = _email_row(db)
    whatsapp = insert_outbox(db)
    for token in (
        independent_token("click", plan_key),  # a click token is no unsubscribe token
        independent_token("unsubscribe", plan_key, secret="a-forger-guessed-this-secret"),
        independent_token("unsubscribe", whatsapp),  # WhatsApp stops with STOP, not with this page
        independent_token("unsubscribe", f"plan-{uuid.uuid4().hex}"),
    ):
        assert client.get(f"/u/{token}").status_code == 404
        assert client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert revocations(db, address) == []
    assert fetch(
        db, "select count(*) from ops.consent_revocations where detail->>'plan_key' = %s", whatsapp
    ) == [(0,)]


def test_unsubscribe_body_is_bounded(client, db):
    plan_key, address = _email_row(db)
    answer = client.post(
        _path(links.unsubscribe_url(plan_key)),
        content=b"List-Unsubscribe=One-Click&pad=" + b"x" * 10_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 413
    assert revocations(db, address) == []


# -- without the settings ------------------------------------------------------------------------------


def test_service_starts_without_link_settings_and_links_answer_404(shops, database, db, monkeypatch, caplog):
    monkeypatch.setenv(links.SECRET_ENV, SECRET)
    monkeypatch.setenv(links.PUBLIC_URL_ENV, PUBLIC_URL)
    plan_key, address = _email_row(db)
    click, unsubscribe = (_path(links.click_url(plan_key)), _path(links.unsubscribe_url(plan_key)))
    monkeypatch.delenv(links.SECRET_ENV)
    with caplog.at_level(logging.WARNING, logger="cart_recovery.webhooks.config"):
        app = create_app(WebhookConfig.from_env(database_url=database.url))
    warnings = [r.getMessage() for r in caplog.records if "links are off" in r.getMessage()]
    assert len(warnings) == 1 and "CART_RECOVERY_LINK_SECRET is not set" in warnings[0]
    with TestClient(app) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get(click, follow_redirects=False).status_code == 404
        assert client.get(unsubscribe).status_code == 404
        assert client.post(unsubscribe).status_code == 404
    assert outbox(db, plan_key)["clicked_at"] is None
    assert revocations(db, address) == []
