"""Polling ingest: stream records from each shop's API, validate them, land them in ``raw``.

``ingest_shop(shop, interval_end=..., conn_url=...)`` is what the ``cart_ingest`` DAG calls per shop.
"""

from __future__ import annotations


def ingest_shop(*args, **kwargs) -> dict:
    from cart_recovery.ingest.poll import ingest_shop as run  # heavy imports only when polling

    return run(*args, **kwargs)


def warehouse_url(conn_id: str | None = None) -> str:
    from cart_recovery.ingest.poll import warehouse_url as resolve

    return resolve(conn_id)


__all__ = ["ingest_shop", "warehouse_url"]
