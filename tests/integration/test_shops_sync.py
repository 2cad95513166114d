"""`cart-recovery shops sync`: the shops file into ops.shops, from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

CLI = str(Path(sys.executable).parent / "cart-recovery")
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "shops.example.yaml"


@pytest.fixture(scope="module")
def database(module_database):
    """A warehouse of this module's own: the command rewrites ops.shops."""
    return module_database


def _sync(shops_file: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CART_RECOVERY_SHOPS_FILE": str(shops_file)}
    return subprocess.run([CLI, "shops", "sync"], env=env, capture_output=True, text=True, timeout=120)


def test_sync_copies_the_file_and_says_what_changed(database, tmp_path):
    first = _sync(EXAMPLE)
    assert first.returncode == 0, first.stderr
    assert "added: anatolia-shopify, bosphorus-woo, kapadokya-ideasoft, ege-ticimax" in first.stdout
    assert "full refresh" in first.stdout
    again = _sync(EXAMPLE)
    assert again.returncode == 0 and "added" not in again.stdout and "full refresh" not in again.stdout
    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute("select shop_id, country, timezone, currency, language from ops.shops order by 1")
        assert cur.fetchall()[1] == ("bosphorus-woo", "GB", "Europe/London", "GBP", "en")

    broken = tmp_path / "shops.yaml"
    broken.write_text(EXAMPLE.read_text().replace("    country: GB\n", ""))
    refused = _sync(broken)
    assert refused.returncode != 0
    assert "shop 'bosphorus-woo' has no country" in refused.stderr + refused.stdout
