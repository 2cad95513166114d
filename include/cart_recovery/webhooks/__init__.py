"""The webhook service: a FastAPI app, run by uvicorn, that lands platform webhooks in ``raw``.

Separate from the Airflow api-server so that internet traffic never reaches the Airflow UI. Each
request is authenticated by the platform's HMAC signature over the raw body, stored in
``raw.webhook_events`` with its delivery id (duplicates ignored) and committed before the 2xx.
"""
