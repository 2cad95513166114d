"""Realistic peers for tests and the demo: fake shop APIs speaking each platform's wire format.

    with run_simulator(seed=7, carts_per_shop=20) as sim:
        sim.url("anatolia-shopify")      # base URL of one fake shop
        sim.connection_env()             # AIRFLOW_CONN_* values for every shop
        sim.shops_yaml()                 # the matching shops file

Data is generated from the seed (``data.py``); each platform's API lives in its own module
(``shopify_api.py``, ``woocommerce_api.py``, ``ticimax_api.py``, ``ideasoft_api.py``); outgoing
signed webhooks are built and sent by ``webhooks.py``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_REFERENCE_TIME": "cart_recovery.simulator.data",
    "SimulatedShop": "cart_recovery.simulator.data",
    "Simulator": "cart_recovery.simulator.server",
    "run_simulator": "cart_recovery.simulator.server",
    "Knobs": "cart_recovery.simulator.state",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so that the CLI can import ``simulator.command`` without FastAPI, uvicorn and Faker.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
