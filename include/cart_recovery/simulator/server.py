"""One FastAPI app serving every simulated shop under ``/shops/<shop_id>``, run by uvicorn.

``run_simulator`` starts it on loopback in a background thread and yields a ``Simulator`` that
knows each shop's base URL, the matching ``shops.yaml`` entries and ``AIRFLOW_CONN_*`` values.
``cart-recovery simulate`` runs the same app in the foreground. With ``smtp=True`` an SMTP sink
(``smtp_sink.SmtpSink``) runs beside it and ``AIRFLOW_CONN_SMTP_DEFAULT`` points at it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import uvicorn
import yaml
from fastapi import FastAPI

from cart_recovery.shops import Platform, Shop
from cart_recovery.simulator import ideasoft_api, shopify_api, ticimax_api, whatsapp_api, woocommerce_api
from cart_recovery.simulator.data import (
    DEFAULT_REFERENCE_TIME,
    ShopData,
    SimulatedShop,
    default_shops,
    generate_shop,
    shop_policy,
)
from cart_recovery.simulator.smtp_sink import SmtpSink
from cart_recovery.simulator.state import Knobs, SimulatorState

log = logging.getLogger(__name__)


def build_app(state: SimulatorState) -> FastAPI:
    app = FastAPI(
        title="cart-recovery shop simulator",
        description="Fake Shopify, WooCommerce, Ticimax and Ideasoft APIs and a fake WhatsApp Cloud API "
        "(under /whatsapp) for tests and demos.",
    )
    for module in (shopify_api, woocommerce_api, ticimax_api, ideasoft_api):
        app.include_router(module.router(state))
    app.include_router(whatsapp_api.router(state.whatsapp), prefix="/whatsapp")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "shops": sorted(state.shops)}

    return app


def generate(
    seed: int,
    carts_per_shop: int,
    *,
    defects: int = 0,
    reference_time: datetime = DEFAULT_REFERENCE_TIME,
    shops: list[SimulatedShop] | None = None,
) -> dict[str, ShopData]:
    return {
        shop.id: generate_shop(
            shop, seed=seed, carts=carts_per_shop, reference_time=reference_time, defects=defects
        )
        for shop in (shops or default_shops(seed))
    }


@dataclass
class Simulator:
    """A running simulator: where each shop lives and how to configure the project for it."""

    base_url: str
    state: SimulatorState
    _server: uvicorn.Server | None = field(default=None, repr=False)
    smtp: SmtpSink | None = None  # the fake mail relay, when started with smtp=True

    @property
    def knobs(self) -> Knobs:
        return self.state.knobs

    @property
    def shops(self) -> list[SimulatedShop]:
        return [data.shop for data in self.state.shops.values()]

    def data(self, shop_id: str) -> ShopData:
        return self.state.shops[shop_id]

    def url(self, shop_id: str) -> str:
        return f"{self.base_url}/shops/{shop_id}"

    def requests(self, shop_id: str, label: str = "api") -> int:
        return self.state.requests[(shop_id, label)]

    def shop(self, shop_id: str) -> Shop:
        """The project's ``Shop`` for a simulated shop, as the shops file would declare it."""
        sim = self.data(shop_id).shop
        return Shop(
            id=sim.id,
            platform=sim.platform,
            domain=sim.domain,
            api_base_url=self.url(sim.id),
            country=sim.country,
            timezone=sim.timezone,
            currency=sim.currency,
            language=sim.language,
            conn_id=sim.conn_id,
            policy=shop_policy(sim),
        )

    def shop_models(self) -> list[Shop]:
        return [self.shop(shop_id) for shop_id in self.state.shops]

    def connection(self, shop_id: str) -> dict:
        """The Airflow connection (JSON form) holding the shop's credentials."""
        sim = self.data(shop_id).shop
        conn: dict = {
            "conn_type": "http",
            "host": self.url(shop_id),
            "extra": {"webhook_secret": sim.webhook_secret},
        }
        if sim.platform in (Platform.WOOCOMMERCE, Platform.IDEASOFT):
            conn.update(login=sim.api_key, password=sim.api_secret)
        else:  # Shopify's access token, Ticimax's UyeKodu
            conn.update(password=sim.api_key)
        return conn

    @property
    def whatsapp(self) -> whatsapp_api.WhatsAppState:
        """The fake WhatsApp Cloud API: its knobs, registries and log of accepted messages."""
        return self.state.whatsapp

    def whatsapp_connection(self) -> dict:
        """The ``whatsapp_default`` connection (JSON form): host is ``<base>/whatsapp``."""
        return self.whatsapp.connection(f"{self.base_url}/whatsapp")

    def connection_env(self) -> dict[str, str]:
        env = {
            f"AIRFLOW_CONN_{shop.conn_id.upper()}": json.dumps(self.connection(shop.id))
            for shop in self.shops
        }
        if self.smtp is not None:
            env.update(self.smtp.connection_env())
        env["AIRFLOW_CONN_WHATSAPP_DEFAULT"] = json.dumps(self.whatsapp_connection())
        return env

    def shops_yaml(self) -> str:
        entries = [shop.model_dump(mode="json") for shop in self.shop_models()]
        return yaml.safe_dump({"shops": entries}, sort_keys=False, allow_unicode=True)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


@contextlib.contextmanager
def run_simulator(
    *,
    seed: int = 1,
    carts_per_shop: int = 20,
    port: int = 0,
    host: str = "127.0.0.1",
    defects: int = 0,
    knobs: Knobs | None = None,
    reference_time: datetime = DEFAULT_REFERENCE_TIME,
    shop_ids: list[str] | None = None,
    smtp: bool = False,
) -> Iterator[Simulator]:
    """Serve the fake shop APIs on ``host:port`` (0: any free port) until the block ends.

    ``shop_ids`` limits the simulator to some of the default shops (e.g. one big Shopify shop for
    the polling benchmark, without generating the other three). ``smtp`` also starts the SMTP
    sink on ``host`` (any free port), as ``Simulator.smtp``.
    """
    shops = default_shops(seed)
    if shop_ids is not None:
        unknown = set(shop_ids) - {shop.id for shop in shops}
        if unknown:
            raise ValueError(f"no simulated shops {sorted(unknown)}; choose from {[s.id for s in shops]}")
        shops = [shop for shop in shops if shop.id in shop_ids]
    state = SimulatorState(
        shops=generate(seed, carts_per_shop, defects=defects, reference_time=reference_time, shops=shops),
        knobs=knobs or Knobs(),
    )
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(build_app(state), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="shop-simulator"
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the shop simulator did not start; see the log above")
        time.sleep(0.01)
    sink = None
    try:
        sink = SmtpSink(host=host).start() if smtp else None
        yield Simulator(base_url=f"http://{host}:{bound_port}", state=state, _server=server, smtp=sink)
    finally:
        if sink is not None:
            sink.stop()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve_forever(
    *,
    seed: int,
    carts_per_shop: int,
    host: str,
    port: int,
    defects: int,
    knobs: Knobs,
    announce,
    smtp: bool = True,
) -> None:
    """Run until interrupted; ``announce(simulator)`` is called once the server listens."""
    with run_simulator(
        seed=seed,
        carts_per_shop=carts_per_shop,
        host=host,
        port=port,
        defects=defects,
        knobs=knobs,
        smtp=smtp,
    ) as simulator:
        announce(simulator)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
