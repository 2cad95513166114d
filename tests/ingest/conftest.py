"""Fixtures of the polling tests: a running shop simulator and a clean slate for its shops."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest

from cart_recovery.database import Database
from cart_recovery.simulator import Knobs, Simulator, run_simulator


def _forget_shops(url: str, shop_ids: list[str]) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            for table in (
                "raw.polled_records",
                "ops.quarantine",
                "ops.ingest_watermarks",
                "ops.validation_runs",
                "ops.phone_numbers",
            ):
                cur.execute(f"delete from {table} where shop_id = any(%s)", (shop_ids,))
    finally:
        conn.close()


@pytest.fixture
def knobs() -> Knobs:
    """Failure knobs of the simulator; a test changes them before or while it polls."""
    return Knobs()


@pytest.fixture
def defects() -> int:
    return 0


@pytest.fixture
def simulator(
    database: Database, knobs: Knobs, defects: int, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Simulator]:
    """Fake shops of all four platforms (8 carts each), their connections in the environment,
    and no rows of theirs left in the test warehouse."""
    with run_simulator(seed=11, carts_per_shop=8, defects=defects, knobs=knobs) as sim:
        for name, value in sim.connection_env().items():
            monkeypatch.setenv(name, value)
        shop_ids = [shop.id for shop in sim.shops]
        _forget_shops(database.url, shop_ids)
        yield sim
        _forget_shops(database.url, shop_ids)
