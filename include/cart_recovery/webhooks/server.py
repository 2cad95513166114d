"""Runs the webhook app under uvicorn (``cart-recovery webhooks``)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def serve(*, host: str, port: int, database_url: str, workers: int = 1, log_level: str = "info") -> int:
    import os

    import uvicorn

    from cart_recovery import settings
    from cart_recovery.webhooks.app import create_app
    from cart_recovery.webhooks.config import WebhookConfig

    # Read and check the configuration here, so a missing secret fails before uvicorn starts.
    config = WebhookConfig.from_env(database_url=database_url)
    log.info(
        "Webhook service on http://%s:%s (%d shops with webhooks, WhatsApp %s, max body %d bytes)",
        host,
        port,
        len(config.shops),
        "configured" if config.whatsapp else "not configured",
        config.max_body_bytes,
    )
    if workers == 1:
        app = create_app(config)
        _freeze_heap()
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    else:
        # Each worker process builds its own app (and pool) from the same environment.
        os.environ[settings.DATABASE_URL_ENV] = database_url
        uvicorn.run(
            "cart_recovery.webhooks.server:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,
        )
    return 0


def worker_app():
    """The app of one of several worker processes (each builds its own from the environment)."""
    from cart_recovery.webhooks.app import create_app

    app = create_app()
    _freeze_heap()
    return app


def _freeze_heap() -> None:
    """Move everything loaded so far (FastAPI, pydantic, the app) out of the garbage collector's
    sight: a full collection then walks only what requests allocate, instead of pausing every
    request in flight for the whole imported heap."""
    import gc

    gc.collect()
    gc.freeze()
