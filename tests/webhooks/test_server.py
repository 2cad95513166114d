"""`cart-recovery webhooks` serves the app under uvicorn on a loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dependencies import missing
from webhook_helpers import fetch, signed_shopify_checkout

from cart_recovery.cli import build_parser


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_cli_parses_webhooks_defaults():
    args = build_parser().parse_args(["webhooks"])
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 8081, 1)
    args = build_parser().parse_args(["webhooks", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.host, args.port) == ("0.0.0.0", 9000)


@pytest.fixture
def served(shops, database, tmp_path: Path):
    """``cart-recovery webhooks`` on a free loopback port; yields its base URL."""
    executable = shutil.which("cart-recovery", path=str(Path(sys.executable).parent))
    if executable is None:
        missing("the cart-recovery console script is not installed in this environment (run `make install`)")
    port = _free_port()
    env = {**os.environ, "CART_RECOVERY_DATABASE_URL": database.url}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [executable, "webhooks", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the webhook service did not start within 60 s"
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_served_by_uvicorn(served, shops, db):
    base = served
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "database": "ok"}
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    assert {
        "/webhooks/shopify",
        "/webhooks/woocommerce",
        "/webhooks/ideasoft",
        "/webhooks/whatsapp",
        "/healthz",
    } <= set(paths)
    assert {"get", "post"} <= set(paths["/webhooks/whatsapp"])

    body, headers = signed_shopify_checkout(shops, "over-http", topic="checkouts/create")
    answer = httpx.post(f"{base}/webhooks/shopify", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    # Committed before the answer: visible at once from another connection.
    assert fetch(db, "select delivery_id from raw.webhook_events where shop_id = %s", shops.shopify.id) == [
        ("over-http",)
    ]


def test_api_docs_render_without_internet(served, tmp_path: Path):
    """Swagger UI's assets come from this service, and the page renders the OpenAPI 3.1 schema."""
    docs = httpx.get(f"{served}/docs")
    assert docs.status_code == 200
    assert 'src="/docs-assets/swagger-ui-bundle.js"' in docs.text
    assert "cdn." not in docs.text
    bundle = httpx.get(f"{served}/docs-assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000

    chromium = shutil.which("chromium")
    if chromium is None:
        missing("chromium is not installed (apt-get install -y chromium): the page was not rendered")
    rendered = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=8000",
            "--dump-dom",
            f"{served}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    assert "Unable to render this definition" not in rendered
    assert "/webhooks/shopify" in rendered and "/webhooks/whatsapp" in rendered
